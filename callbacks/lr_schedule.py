"""ABINet's piecewise-constant learning rate: `periods` epochs per phase, lr * gamma**phase, optionally after a
linear warm-up (not in ABINet; off by default); training stops after the last phase, as in ABINet (whose fastai
scheduler ends the run there), even when `training.epochs` asks for more."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from fastai.basic_train import Learner, LearnerCallback

from callbacks.accumulate import step_ends


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
          warmup_iters: int = 0, warmup_from: int = 0) -> float:
    """Learning rate at a 0-based iteration; the `warmup_iters` from `warmup_from` on ramp linearly up to the
    phase's value (a run continued from weights alone, at `training.start_iters`, warms its fresh optimiser up)."""
    warmup = min(1.0, max(iteration - warmup_from + 1, 1) / warmup_iters) if warmup_iters > 0 else 1.0
    return warmup * lr * gamma ** lr_phase(iteration, iters_per_epoch, periods)


def schedule_end(periods: Sequence[float], iters_per_epoch: int, epochs: float) -> float | None:
    """Iterations after which the last lr phase is over, when that comes before `epochs` epochs; else None."""
    if not periods or sum(periods) >= epochs:
        return None
    return sum(periods) * iters_per_epoch


class PiecewiseConstantLR(LearnerCallback):
    """Sets the optimiser's lr before every training batch from the global iteration counter.

    `start_iter` is the global iteration the run starts at (a resumed run passes its checkpoint's); pass
    `iters_per_epoch` when the first epoch is shorter than a full one (a run resumed mid-epoch), else it is read
    from the training loader when training begins. `warmup_iters` > 0 ramps the lr up linearly over the first
    global iterations from `warmup_from` (the run's `training.start_iters`). With `epochs` (the run's
    `training.epochs`) larger than the periods' sum, training stops after the last phase's final iteration and
    says so on `logger`. With `accumulate` > 1 fastai's batches are micro-batches and every count here (the
    iterations, `iters_per_epoch`) is of optimiser steps of `accumulate` micro-batches.
    """

    _order = 20  # after IterationCallback (10), whose on_epoch_end would clear the stop asked for here

    def __init__(self, learn: Learner, lr: float, periods: Sequence[int], gamma: float, start_iter: int = 0,
                 iters_per_epoch: int | None = None, warmup_iters: int = 0, *, warmup_from: int = 0,
                 epochs: float | None = None, logger: logging.Logger | None = None, accumulate: int = 1):
        super().__init__(learn)
        self.accumulate = accumulate
        self.lr, self.periods, self.gamma, self.start_iter = lr, list(periods), gamma, start_iter
        self.iters_per_epoch, self.warmup_iters, self.warmup_from = iters_per_epoch, warmup_iters, warmup_from
        self.epochs, self.logger = epochs, logger
        self.schedule_over = False

    def on_train_begin(self, **kwargs: Any) -> None:
        if self.iters_per_epoch is None:
            self.iters_per_epoch = len(self.learn.data.train_dl) // self.accumulate

    def on_batch_begin(self, iteration: int, train: bool, **kwargs: Any) -> None:
        if train:
            step = self.start_iter + iteration // self.accumulate
            self.learn.opt.lr = lr_at(step, self.iters_per_epoch, self.lr, self.periods, self.gamma,
                                      self.warmup_iters, self.warmup_from)

    def on_batch_end(self, iteration: int, train: bool, **kwargs: Any) -> dict | None:
        if not train or self.epochs is None or not step_ends(iteration, self.accumulate):
            return None
        end = schedule_end(self.periods, self.iters_per_epoch, self.epochs)
        done = self.start_iter + (iteration + 1) // self.accumulate  # fastai counts this batch after its callbacks
        if end is None or done < end:
            return None
        self.schedule_over = True
        if self.logger is not None:
            self.logger.info(f'training ends at iteration {done}, as in ABINet: the last lr phase is over '
                             f'(optimizer.scheduler.periods {self.periods} end after {sum(self.periods)} of '
                             f'training.epochs {self.epochs})')
        return {'stop_epoch': True, 'stop_training': True}

    def on_epoch_end(self, **kwargs: Any) -> dict | None:
        return {'stop_training': True} if self.schedule_over else None
