"""Skip training steps whose loss is not finite; stop the run after too many in a row."""

from __future__ import annotations

import logging
from typing import Any

import torch
from fastai.basic_train import Learner, LearnerCallback

from runtime.distributed import all_true


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training losses were NaN or infinite."""


class NonFiniteGuard(LearnerCallback):
    """A NaN / inf loss skips its backward pass and optimiser step with a warning; `max_in_row` of them in a
    row raise NonFiniteLossError. In distributed runs the ranks agree first: if any rank's loss is not finite,
    every rank skips the step (a DDP backward on some ranks only would hang)."""

    _order = -10  # before MixedPrecision (-5), which would otherwise run the scaled backward

    def __init__(self, learn: Learner, max_in_row: int = 10, logger: logging.Logger | None = None,
                 verbose: bool = True, start_iter: int = 0, accumulate: int = 1):
        super().__init__(learn)
        self.accumulate = accumulate  # micro-batches per optimiser step: a skipped one skips its whole step
        self.max_in_row, self.start_iter = max_in_row, start_iter
        self.logger = logger or logging.getLogger('conclr')
        self.verbose = verbose  # False on ranks other than 0: the ranks agree, one warning is enough
        self.in_row = 0
        self.skipped = 0  # over the whole run

    def on_backward_begin(self, last_loss: torch.Tensor, iteration: int, **kwargs: Any) -> dict | None:
        finite = torch.isfinite(last_loss.detach()).all()  # on the loss's device, agreed there too
        # The one host read of a step here: running the backward pass and the step is a host decision. It comes
        # right after fastai's own copy of the loss to the CPU (CallbackHandler.on_backward_begin), which has
        # already waited for the forward pass, so it adds no stall of its own.
        if bool(all_true(finite)):
            self.in_row = 0
            return None
        self.in_row += 1
        self.skipped += 1
        local = bool(finite)  # reads below happen only on the rare skipped step
        what = f'loss {float(last_loss.detach()):.4g}' if not local else 'non-finite loss on another process'
        if self.verbose:
            step = self.start_iter + iteration // self.accumulate + 1
            self.logger.warning(f'non-finite training loss ({what}) at iteration {step}: '
                                f'step skipped ({self.in_row} in a row, limit {self.max_in_row})')
        if self.in_row >= self.max_in_row:
            raise NonFiniteLossError(f'{self.in_row} non-finite training losses in a row (training.max_nonfinite '
                                     f'= {self.max_in_row}): lower optimizer.lr, check the data, or try '
                                     'training.amp bf16 instead of fp16')
        return {'skip_bwd': True, 'skip_step': True}
