"""IterationCallback: log every `show_iters`, evaluate every `eval_iters` (keeping the best by cwr),
save every `save_iters` (keeping the last five), and write TensorBoard scalars.

In a distributed run every rank runs it: the logged training losses are averaged over the ranks, evaluation
is a collective (every rank evaluates its shard), and only the main rank (`is_main`) writes checkpoints; its
logger and writer are the only ones that write (other ranks get a warnings-only logger and no writer).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from fastai.basic_train import Learner, LearnerCallback

from callbacks.accumulate import step_ends
from runtime.checkpoint import save_checkpoint
from runtime.distributed import sum_tensor_across_ranks
from runtime.errors import one_line_error
from runtime.stop_signal import StopSignal, signal_name

KEEP_LAST = 5


def _as_scalar(value: Any, device: torch.device) -> torch.Tensor:
    """A 0-dim float32 tensor of a loss term (a tensor stays where it is; a Python number is filled on `device`)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(())
    return torch.full((), float(value), device=device)


class LossWindow:
    """The training losses of one logging window, kept on the device until the window is logged.

    Every step adds a row: its loss (fastai hands the loss over already copied to the CPU), whether it was
    finite on this rank, and every term of the loss function's `losses` under `keys`, the list fixed by the first
    step of the run, so every rank reduces a table of the same shape. A non-finite step's row holds zeros.
    `reduce()` sums the table over the ranks in one collective and averages each key over the steps whose loss
    was finite on every rank (exactly the steps NonFiniteGuard let through).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.keys: list[str] | None = None
        self.clear()

    def clear(self) -> None:
        """Start a new window (the key list stays)."""
        self._losses: list[float] = []
        self._finite: list[bool] = []
        self._terms: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._losses)

    def add(self, loss: float, terms: dict[str, Any]) -> None:
        """Record one training step; `terms` maps names to 0-dim tensors (left on their device) or numbers."""
        if self.keys is None:
            self.keys = list(terms)
        finite = math.isfinite(loss)
        self._losses.append(loss if finite else 0.0)
        self._finite.append(finite)
        if self.keys and finite:
            self._terms.append(torch.stack([_as_scalar(terms.get(k, 0.0), self.device) for k in self.keys]))
        elif self.keys:
            self._terms.append(torch.zeros(len(self.keys), device=self.device))

    def reduce(self) -> tuple[dict[str, float], int]:
        """(mean of the loss and of every term over the steps every rank trained, steps some rank skipped).

        A collective on every rank; the only copy of the window's values to the host."""
        local = torch.tensor([[loss, 0.0 if ok else 1.0, 1.0] for loss, ok in zip(self._losses, self._finite)],
                             dtype=torch.float64).reshape(-1, 3)  # loss, non-finite here, one rank
        table = local.to(self.device)
        if self._terms:
            table = torch.cat([table, torch.stack(self._terms).to(device=self.device, dtype=torch.float64)], 1)
        table = sum_tensor_across_ranks(table)
        kept = table[:, 1] == 0
        totals = torch.where(kept.unsqueeze(1), table, torch.zeros_like(table)).sum(0)
        totals = torch.cat([totals, (~kept).sum().reshape(1).to(totals.dtype)]).tolist()
        count, skipped = totals[2], int(totals[-1])
        if not count:
            return {'loss': math.nan}, skipped
        return {'loss': totals[0] / count, **{k: v / count for k, v in zip(self.keys or [], totals[3:-1])}}, skipped


class IterationCallback(LearnerCallback):
    """Drives the iteration-based bookkeeping of an ABINet training run on top of fastai's epoch loop.

    `start_iter`, `start_epoch` and `start_batch` place a resumed run (the global iteration counter, the absolute
    epoch, and the batches of that epoch already trained). `extra_state()` returns more entries for every
    checkpoint (random states, sampler seed, ...); it is called on every rank at every save, so it may hold
    collectives. `saved` lists the periodic checkpoints already on disk, oldest first, for the keep-last-five rule.
    With `stop`, a SIGINT / SIGTERM ends training after the current step with one periodic (resumable) checkpoint
    and no evaluation; `evaluate` returns None when a stop cut an evaluation short.
    Every `show_iters` window also reports the time spent waiting for data (from the end of one batch to the
    start of the next, batch-level augmentation such as ConAug included) versus computing. With `accumulate` > 1
    fastai's batches are micro-batches: the counters, periods and `max_iters` count optimiser steps, the loss
    window holds one row per micro-batch (its mean is the steps' mean loss), and a stop request is agreed on every
    `stop_every` steps (a CPU collective).
    """

    _order = 10  # after the loss-producing callbacks

    def __init__(self, learn: Learner, *, name: str, workdir: str | Path, logger: logging.Logger,
                 evaluate: Callable[[int], dict[str, float] | None], writer: Any = None, show_iters: int = 50,
                 eval_iters: int = 3000, save_iters: int = 3000, start_iter: int = 0, max_iters: int | None = None,
                 best_cwr: float = -1.0, start_epoch: int = 0, start_batch: int = 0, is_main: bool = True,
                 world_size: int = 1, extra_state: Callable[[], dict[str, Any]] | None = None,
                 saved: list[Path] | None = None, stop: StopSignal | None = None,
                 records: dict[str, list[dict[str, float]]] | None = None, accumulate: int = 1,
                 stop_every: int = 1):
        super().__init__(learn)
        self.accumulate, self.stop_every = accumulate, stop_every
        self.name, self.workdir, self.logger = name, Path(workdir), logger
        self.evaluate, self.writer = evaluate, writer
        self.show_iters, self.eval_iters, self.save_iters = show_iters, eval_iters, save_iters
        self.start_iter, self.max_iters, self.best_cwr = start_iter, max_iters, best_cwr
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self.is_main, self.world_size = is_main, world_size
        self.extra_state = extra_state
        self.stop = stop
        self.iteration = start_iter
        self.epoch = start_epoch
        self.batch_in_epoch = start_batch
        self.saved: list[Path] = list(saved or [])
        records = records or {}  # a resumed run's records up to its checkpoint: they then cover the whole run
        self.history: list[dict[str, float]] = list(records.get('history', []))  # every evaluation
        self.train_history: list[dict[str, float]] = list(records.get('train_history', []))  # mean losses per window
        # every `show_iters` window: steps, seconds (training only: no evaluation or saving), data/compute split, speed
        self.timings: list[dict[str, float]] = list(records.get('timings', []))

    def on_train_begin(self, **kwargs: Any) -> dict:
        self._window = LossWindow(self._device())
        self._reset_window()
        self.epoch = self.start_epoch
        # fastai's own end-of-epoch validation is skipped: evaluation is iteration-based here.
        return {'skip_validate': True}

    def _reset_window(self) -> None:
        self._window.clear()
        self._data_time = self._compute_time = 0.0
        self._window_start = self._last_end = time.perf_counter()
        self._window_cpu = time.process_time()

    def on_epoch_begin(self, epoch: int, **kwargs: Any) -> None:
        self.epoch = self.start_epoch + epoch
        self.batch_in_epoch = self.start_batch if epoch == 0 else 0

    def on_batch_begin(self, train: bool, **kwargs: Any) -> None:
        if train:
            self._batch_start = time.perf_counter()
            self._data_time += self._batch_start - self._last_end

    def on_batch_end(self, last_loss: torch.Tensor, train: bool, iteration: int = 0, **kwargs: Any) -> dict | None:
        if not train:
            return None
        self._compute_time += time.perf_counter() - self._batch_start
        # fastai's loss_batch already copied the loss to the CPU; the terms stay on the device.
        self._window.add(float(last_loss), getattr(self.learn.loss_func, 'losses', {}))
        if not step_ends(iteration, self.accumulate):
            self._last_end = time.perf_counter()
            return None
        self.iteration += 1
        self.batch_in_epoch += 1
        it = self.iteration
        if it % self.show_iters == 0:
            self._log_train()
        if it % self.eval_iters == 0:
            self._evaluate()
        if it % self.save_iters == 0:
            self._save_periodic()
        self._last_end = time.perf_counter()
        if self.max_iters is not None and it >= self.max_iters:
            return {'stop_epoch': True, 'stop_training': True}
        if self.stop is not None and (it - self.start_iter) % self.stop_every == 0 and self.stop.agreed():
            return {'stop_epoch': True, 'stop_training': True}  # a CPU collective: every rank, every `stop_every` steps
        return None

    def on_epoch_end(self, **kwargs: Any) -> dict:
        stop = self.max_iters is not None and self.iteration >= self.max_iters
        if self.stop is not None and self.stop_every > 1 and not self.stop.stopped:
            self.stop.agreed()  # a request that came since the last check (every rank ends the epoch together)
        return {'stop_training': stop or (self.stop is not None and self.stop.stopped)}

    def on_train_end(self, exception: Any = None, **kwargs: Any) -> None:
        if exception:
            self.logger.error(f'training stopped by {type(exception).__name__}: {one_line_error(exception)}')
            return
        if self.stop is not None and self.stop.stopped:
            self._save_on_stop()
            return
        if len(self._window):
            self._log_train()
        if not self.history or self.history[-1]['iteration'] != self.iteration:
            self._evaluate()
        if not self.saved or not self.saved[-1].name.endswith(f'_{self.iteration}.pth'):
            self._save_periodic()
        if self.writer is not None:
            self.writer.flush()

    def _save_on_stop(self) -> None:
        """After SIGINT / SIGTERM: log the partial window and save one resumable checkpoint, without evaluating."""
        if len(self._window):
            self._log_train()
        if not self.saved or not self.saved[-1].name.endswith(f'_{self.iteration}.pth'):
            self._save_periodic()
        self.logger.info(f'stopped by {signal_name(self.stop.signum)} at iter {self.iteration}: '
                         f'{self.saved[-1]} holds this point; no evaluation')

    def _lr(self) -> float:
        return float(self.learn.opt.lr)

    def _device(self) -> torch.device:
        param = next(self.learn.model.parameters(), None)
        return param.device if param is not None and param.device.type == 'cuda' else torch.device('cpu')

    def _log_train(self) -> None:
        means, skipped_steps = self._window.reduce()
        self.train_history.append({'iteration': self.iteration, **means})
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        speed = len(self._window) * self.learn.data.train_dl.batch_size * self.world_size / elapsed  # micro-batches
        terms = ', '.join(f'{k} = {v:.4f}' for k, v in means.items() if k != 'loss')
        skipped = f', {skipped_steps} non-finite step(s) skipped' if skipped_steps else ''
        # CPU seconds of this process's threads: well under threads x seconds when other jobs shared the CPU
        cpu = time.process_time() - self._window_cpu
        self.timings.append({'iteration': self.iteration, 'steps': len(self._window) // self.accumulate,
                             'seconds': elapsed, 'cpu_seconds': cpu, 'data_seconds': self._data_time,
                             'compute_seconds': self._compute_time, 'images_per_second': speed})
        self.logger.info(f'epoch {self.epoch} iter {self.iteration}: loss = {means["loss"]:.4f}'
                         + (f', {terms}' if terms else '') + f', lr = {self._lr():.2e}, {speed:.1f} img/s, '
                         f'data {self._data_time:.1f} s / compute {self._compute_time:.1f} s{skipped}')
        if self.writer is not None:
            for key, value in means.items():
                self.writer.add_scalar(f'train/{key}', value, self.iteration)
            self.writer.add_scalar('train/lr', self._lr(), self.iteration)
            self.writer.add_scalar('train/images_per_second', speed, self.iteration)
            self.writer.add_scalar('train/data_seconds', self._data_time, self.iteration)
            self.writer.add_scalar('train/compute_seconds', self._compute_time, self.iteration)
        self._reset_window()

    def _evaluate(self) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        result = self.evaluate(self.iteration)
        self.learn.model.train()
        if result is None:
            self.logger.info(f'epoch {self.epoch} iter {self.iteration}: evaluation abandoned (stopping)')
            return
        result = {'iteration': self.iteration, **result}
        self.history.append(result)
        shown = ', '.join(f'{k} = {v:.4f}' for k, v in result.items() if k != 'iteration')
        self.logger.info(f'epoch {self.epoch} iter {self.iteration}: eval {shown} '
                         f'({time.perf_counter() - start:.1f} s)')
        if self.writer is not None:
            for key, value in result.items():
                if key != 'iteration':
                    self.writer.add_scalar(f'eval/{key}', value, self.iteration)
        if result['cwr'] > self.best_cwr:  # the same on every rank: evaluation results are gathered
            self.best_cwr = result['cwr']
            path = self._save(self.workdir / f'best-{self.name}.pth')
            self.logger.info(f'best cwr {self.best_cwr:.4f} at iter {self.iteration}, saved {path}')
        self._window_start += time.perf_counter() - start  # evaluation time is not part of the window
        self._window_cpu += time.process_time() - cpu

    def records(self) -> dict[str, list[dict[str, float]]]:
        """Evaluations, loss windows and timings so far (saved in every checkpoint, restored on resuming)."""
        return {'history': [dict(h) for h in self.history], 'train_history': [dict(h) for h in self.train_history],
                'timings': [dict(t) for t in self.timings]}

    def _save(self, path: Path) -> Path:
        extra = self.extra_state() if self.extra_state is not None else {}  # on every rank: may gather
        if self.is_main:
            save_checkpoint(path, self.learn.model, self.learn.opt, iteration=self.iteration, epoch=self.epoch,
                            batch_in_epoch=self.batch_in_epoch, best_cwr=self.best_cwr, lr=self._lr(),
                            records=self.records(), **extra)
        return path

    def _save_periodic(self) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        path = self._save(self.workdir / f'{self.name}_{self.epoch}_{self.iteration}.pth')
        if path not in self.saved:
            self.saved.append(path)
        self.logger.info(f'saved {path}')
        while len(self.saved) > KEEP_LAST:
            old = self.saved.pop(0)
            if self.is_main:
                old.unlink(missing_ok=True)
        self._window_start += time.perf_counter() - start
        self._window_cpu += time.process_time() - cpu
