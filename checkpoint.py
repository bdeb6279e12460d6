"""Former home of support/checkpoint.py, kept only while tools/ood_experiment.py still imports it (its split is
separate work); new code imports support.checkpoint."""

from support.checkpoint import CheckpointError  # noqa: F401
