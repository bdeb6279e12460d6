"""ABINet's piecewise-constant learning rate: `periods` epochs per phase, lr * gamma**phase, optionally after a
linear warm-up (not in ABINet; off by default)."""

from __future__ import annotations

from typing import Any, Sequence

from fastai.basic_train import Learner, LearnerCallback


def lr_phase(iteration: int, iters_per_epoch: int, periods: Sequence[int]) -> int:
    """Index of the phase that iteration `iteration` (0-based) falls into; the last phase continues."""
    epoch = iteration / max(iters_per_epoch, 1)
    boundary = 0
    for phase, period in enumerate(periods):
        boundary += period
        if epoch < boundary:
            return phase
    return max(len(periods) - 1, 0)


def lr_at(iteration: int, iters_per_epoch: int, lr: float, periods: Sequence[int], gamma: float,
          warmup_iters: int = 0) -> float:
    """Learning rate at a 0-based iteration; the first `warmup_iters` ramp linearly up to the phase's value."""
    warmup = min(1.0, (iteration + 1) / warmup_iters) if warmup_iters > 0 else 1.0
    return warmup * lr * gamma ** lr_phase(iteration, iters_per_epoch, periods)


class PiecewiseConstantLR(LearnerCallback):
    """Sets the optimiser's lr before every training batch from the global iteration counter.

    `start_iter` is the global iteration the run starts at (a resumed run passes its checkpoint's); pass
    `iters_per_epoch` when the first epoch is shorter than a full one (a run resumed mid-epoch), else it is read
    from the training loader when training begins. `warmup_iters` > 0 ramps the lr up linearly over the first
    global iterations.
    """

    def __init__(self, learn: Learner, lr: float, periods: Sequence[int], gamma: float, start_iter: int = 0,
                 iters_per_epoch: int | None = None, warmup_iters: int = 0):
        super().__init__(learn)
        self.lr, self.periods, self.gamma, self.start_iter = lr, list(periods), gamma, start_iter
        self.iters_per_epoch, self.warmup_iters = iters_per_epoch, warmup_iters

    def on_train_begin(self, **kwargs: Any) -> None:
        if self.iters_per_epoch is None:
            self.iters_per_epoch = len(self.learn.data.train_dl)

    def on_batch_begin(self, iteration: int, train: bool, **kwargs: Any) -> None:
        if train:
            self.learn.opt.lr = lr_at(self.start_iter + iteration, self.iters_per_epoch, self.lr, self.periods,
                                      self.gamma, self.warmup_iters)
