"""IterationCallback: log every `show_iters`, evaluate every `eval_iters` (keeping the best by cwr),
save every `save_iters` (keeping the last five), and write TensorBoard scalars."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from fastai.basic_train import Learner, LearnerCallback

from checkpoint import save_checkpoint

KEEP_LAST = 5


class IterationCallback(LearnerCallback):
    """Drives the iteration-based bookkeeping of an ABINet training run on top of fastai's epoch loop."""

    _order = 10  # after the loss-producing callbacks

    def __init__(self, learn: Learner, name: str, workdir: str | Path, logger: logging.Logger,
                 evaluate: Callable[[int], dict[str, float]], writer: Any = None, show_iters: int = 50,
                 eval_iters: int = 3000, save_iters: int = 3000, start_iter: int = 0, max_iters: int | None = None,
                 best_cwr: float = -1.0):
        super().__init__(learn)
        self.name, self.workdir, self.logger = name, Path(workdir), logger
        self.evaluate, self.writer = evaluate, writer
        self.show_iters, self.eval_iters, self.save_iters = show_iters, eval_iters, save_iters
        self.start_iter, self.max_iters, self.best_cwr = start_iter, max_iters, best_cwr
        self.iteration = start_iter
        self.saved: list[Path] = []
        self.history: list[dict[str, float]] = []  # every evaluation, for callers and tests
        self.train_history: list[dict[str, float]] = []  # mean losses of every `show_iters` window

    def on_train_begin(self, **kwargs: Any) -> dict:
        self._reset_window()
        self.epoch = 0
        # fastai's own end-of-epoch validation is skipped: evaluation is iteration-based here.
        return {'skip_validate': True}

    def _reset_window(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        self._window_start = time.perf_counter()

    def on_epoch_begin(self, epoch: int, **kwargs: Any) -> None:
        self.epoch = epoch

    def on_batch_end(self, last_loss: torch.Tensor, train: bool, **kwargs: Any) -> dict | None:
        if not train:
            return None
        self.iteration += 1
        self._sums['loss'] += float(last_loss)
        for key, value in getattr(self.learn.loss_func, 'losses', {}).items():
            self._sums[key] += float(value)
        self._count += 1
        it = self.iteration
        if it % self.show_iters == 0:
            self._log_train()
        if it % self.eval_iters == 0:
            self._evaluate()
        if it % self.save_iters == 0:
            self._save_periodic()
        if self.max_iters is not None and it >= self.max_iters:
            return {'stop_epoch': True, 'stop_training': True}
        return None

    def on_epoch_end(self, **kwargs: Any) -> dict:
        stop = self.max_iters is not None and self.iteration >= self.max_iters
        return {'stop_training': stop}

    def on_train_end(self, exception: Any = None, **kwargs: Any) -> None:
        if exception:
            self.logger.error(f'training stopped by {type(exception).__name__}: {exception}')
            return
        if self._count:
            self._log_train()
        if not self.history or self.history[-1]['iteration'] != self.iteration:
            self._evaluate()
        if not self.saved or not self.saved[-1].name.endswith(f'_{self.iteration}.pth'):
            self._save_periodic()
        if self.writer is not None:
            self.writer.flush()

    def _lr(self) -> float:
        return float(self.learn.opt.lr)

    def _log_train(self) -> None:
        means = {k: v / self._count for k, v in self._sums.items()}
        self.train_history.append({'iteration': self.iteration, **means})
        speed = self._count * self.learn.data.train_dl.batch_size / max(time.perf_counter() - self._window_start, 1e-9)
        terms = ', '.join(f'{k} = {v:.4f}' for k, v in means.items() if k != 'loss')
        self.logger.info(f'epoch {self.epoch} iter {self.iteration}: loss = {means["loss"]:.4f}'
                         + (f', {terms}' if terms else '') + f', lr = {self._lr():.2e}, {speed:.1f} img/s')
        if self.writer is not None:
            for key, value in means.items():
                self.writer.add_scalar(f'train/{key}', value, self.iteration)
            self.writer.add_scalar('train/lr', self._lr(), self.iteration)
            self.writer.add_scalar('train/images_per_second', speed, self.iteration)
        self._reset_window()

    def _evaluate(self) -> None:
        start = time.perf_counter()
        result = self.evaluate(self.iteration)
        self.learn.model.train()
        result = {'iteration': self.iteration, **result}
        self.history.append(result)
        shown = ', '.join(f'{k} = {v:.4f}' for k, v in result.items() if k != 'iteration')
        self.logger.info(f'epoch {self.epoch} iter {self.iteration}: eval {shown} '
                         f'({time.perf_counter() - start:.1f} s)')
        if self.writer is not None:
            for key, value in result.items():
                if key != 'iteration':
                    self.writer.add_scalar(f'eval/{key}', value, self.iteration)
        if result['cwr'] > self.best_cwr:
            self.best_cwr = result['cwr']
            path = self._save(self.workdir / f'best-{self.name}.pth')
            self.logger.info(f'best cwr {self.best_cwr:.4f} at iter {self.iteration}, saved {path}')
        self._window_start = time.perf_counter()

    def _save(self, path: Path) -> Path:
        return save_checkpoint(path, self.learn.model, self.learn.opt, iteration=self.iteration, epoch=self.epoch,
                               best_cwr=self.best_cwr, lr=self._lr())

    def _save_periodic(self) -> None:
        path = self._save(self.workdir / f'{self.name}_{self.epoch}_{self.iteration}.pth')
        self.saved.append(path)
        self.logger.info(f'saved {path}')
        while len(self.saved) > KEEP_LAST:
            self.saved.pop(0).unlink(missing_ok=True)
        self._window_start = time.perf_counter()
