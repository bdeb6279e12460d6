"""The path from a config to a fitted Learner: builders (model, loss, optimiser, learner), loaders, and the
train / test phases that main.py runs."""

import runtime.fastai_compat  # noqa: F401  (fastai's shims, before any fastai import below this package)
