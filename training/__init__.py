"""The path from a config to a fitted Learner: builders (model, loss, optimiser, learner), loaders, and the
train / test phases that main.py runs."""
