"""Gradient accumulation: `training.accumulate` micro-batches make one optimiser step.

fastai 1.0.60 calls its batch callbacks once per micro-batch (the training loader yields micro-batches); fastai's
`iteration` counts them. `step_ends(iteration, k)` says whether a micro-batch is the last of its step; the
callbacks that count optimiser steps (lr schedule, iteration bookkeeping, mixed precision, clipping) use it.
Every epoch holds a whole number of steps (the sampler drops the tail), so steps never straddle epochs.

How micro-batches are weighted: a loss function that has an `accumulation_weight` after its call (the
recognition loss: its counted slots) has each micro-batch's gradient weighted by it and the sum divided by the
step's total weight (over every process), which is exactly the gradient of one batch of k times the size; other
losses (ConCLR's) weigh every micro-batch equally: the mean of the k micro-batch losses' gradients. ConAug pairs
and contrastive negatives come from one micro-batch, so for ConCLR this is not the objective of one large batch.
"""

from __future__ import annotations

from typing import Any

import torch
from fastai.basic_train import Learner, LearnerCallback
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from configuration import ConfigError
from runtime.distributed import is_distributed, sum_tensor_across_ranks


def step_ends(iteration: int, accumulate: int) -> bool:
    """Whether fastai's 0-based micro-batch counter `iteration` is the last micro-batch of an optimiser step."""
    return (iteration + 1) % accumulate == 0


def check_accumulate(value: Any) -> int:
    """`training.accumulate` as a positive integer; an error naming the key otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'training.accumulate {value!r}: expected a positive integer (1 = no accumulation)')
    return value


class GradientAccumulation(LearnerCallback):
    """Adds up the gradients of `accumulate` micro-batches and lets fastai step (and zero them) only after the
    last one; a micro-batch whose backward pass was skipped (a non-finite loss) skips its whole step.

    Under DistributedDataParallel the micro-batches before the last run in `no_sync()` (one all-reduce per step).
    The loss handed on to the logging callbacks stays the micro-batch's own loss.
    """

    _order = -30  # before DistributedTrainer's wrapping is used, the non-finite guard and mixed precision

    def __init__(self, learn: Learner, accumulate: int):
        super().__init__(learn)
        self.accumulate = check_accumulate(accumulate)
        self._no_sync: Any = None
        self._loss: torch.Tensor | None = None
        self._total: torch.Tensor | float = 0.0
        self._skipped = False
        self._end = False

    def _leave_no_sync(self) -> None:
        if self._no_sync is not None:
            self._no_sync.__exit__(None, None, None)
            self._no_sync = None

    def on_batch_begin(self, iteration: int, train: bool, **kwargs: Any) -> None:
        if not train:
            return
        self._end = step_ends(iteration, self.accumulate)
        if iteration % self.accumulate == 0:  # the first micro-batch of a step
            self._total, self._skipped = 0.0, False
        self._leave_no_sync()
        if not self._end and isinstance(self.learn.model, DistributedDataParallel):
            self._no_sync = self.learn.model.no_sync()
            self._no_sync.__enter__()

    def on_backward_begin(self, last_loss: torch.Tensor, **kwargs: Any) -> dict | None:
        self._loss = last_loss
        weight = getattr(self.learn.loss_func, 'accumulation_weight', None)
        if weight is None:
            self._total = self._total + 1.0
            return None
        weight = weight.detach().to(last_loss.dtype) if isinstance(weight, torch.Tensor) else float(weight)
        self._total = self._total + weight
        return {'last_loss': last_loss * weight}

    def on_backward_end(self, skip_step: bool, **kwargs: Any) -> dict | None:
        self._leave_no_sync()
        # skip_step set by now means the non-finite guard skipped this micro-batch (skip_bwd alone may just mean
        # that fp16's MixedPrecision ran the scaled backward itself)
        self._skipped = self._skipped or skip_step
        if not self._end or self._skipped:
            return {'skip_step': True}
        self._average_gradients()
        return None

    @torch.no_grad()
    def _average_gradients(self) -> None:
        """Divide the summed gradients by the step's total weight (summed over the processes, whose gradients
        DDP has averaged: so the result is the gradient of the whole global batch)."""
        total = self._total
        if is_distributed():
            device = next(self.learn.model.parameters()).device
            total = torch.as_tensor(total, dtype=torch.float64, device=device).reshape(1).clone()
            total = sum_tensor_across_ranks(total) / torch.distributed.get_world_size()
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        if isinstance(total, torch.Tensor):
            total = total.clamp(min=1)  # no counted slot at all: zero gradients stay zero
            for g in grads:
                g.div_(total.to(g.dtype))
        else:
            for g in grads:
                g.div_(total)

    def on_step_end(self, **kwargs: Any) -> dict | None:
        return None if self._end else {'skip_zero': True}

    def on_batch_end(self, train: bool, **kwargs: Any) -> dict | None:
        if not train or self._loss is None:
            return None
        loss, self._loss = self._loss, None
        return {'last_loss': loss.detach().cpu()}  # the micro-batch's own loss, not its weighted one

    def on_train_end(self, **kwargs: Any) -> None:
        self._leave_no_sync()


class GradientClipping(LearnerCallback):
    """Clip the gradient norm to `clip` before each optimiser step (after the last micro-batch of a step)."""

    def __init__(self, learn: Learner, clip: float, accumulate: int = 1):
        super().__init__(learn)
        self.clip, self.accumulate = clip, accumulate

    def on_backward_end(self, iteration: int, train: bool = True, **kwargs: Any) -> None:
        if self.clip and train and step_ends(iteration, self.accumulate):
            nn.utils.clip_grad_norm_(self.learn.model.parameters(), self.clip)
