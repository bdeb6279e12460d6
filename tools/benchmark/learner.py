"""The fastai Learner's own cost per step against a plain PyTorch loop on the same batches, and the Learner
timers other timed comparisons reuse."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (must come before fastai)

import copy
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from fastai.basic_train import Learner
from fastai.callback import Callback
from fastai.train import GradientClipping
from torch import nn
from torch.utils.data import DataLoader, Dataset

from callbacks.conaug import ConAugPretransform
from callbacks.iteration import IterationCallback
from callbacks.lr_schedule import PiecewiseConstantLR
from callbacks.nonfinite import NonFiniteGuard
from configuration import Config
from tools.benchmark.batches import ABINET, CONCLR, make_batch, make_train_step, model_config
from tools.benchmark.report import Report
from tools.benchmark.settings import Settings
from tools.benchmark.timing import alternating_rounds, call_times, free_device_memory, sync_device
from training.builders import build_learner, build_model, is_conclr
from utils import CharsetMapper

LEARNER_OVERHEAD_TARGET = 3.0  # % : the fastai Learner's own cost per quarter-width step over the plain loop
LEARNER_WEIGHT_AGREEMENT = 1e-5  # largest weight difference, Learner vs plain loop, after the same steps, no dropout
LEARNER_LOSS_AGREEMENT = 1e-3  # relative difference of their last losses (a loose bound; equal in practice)
LEARNER_CHECK_STEPS = 2  # steps of that comparison


class FixedBatchSet(Dataset):
    """One batch served sample by sample, `repeats` times over, as (image, (label, length)) like ImageDataset;
    a DataLoader at the batch's size (no shuffling) collates it back to the same batch every step."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], repeats: int = 1):
        self.images, self.labels, self.lengths = batch
        self.repeats = repeats  # the batches one epoch yields; may change between fits

    def __len__(self) -> int:
        """Samples in one epoch."""
        return self.repeats * self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Sample i of the batch (modulo its size)."""
        j = i % self.images.shape[0]
        return self.images[j], (self.labels[j], self.lengths[j])


class StepTimer(Callback):
    """Stamps the wall clock (device synchronised) after every training batch, once all other callbacks have run,
    and keeps the batch's loss; the gaps between stamps are whole Learner steps (data, callbacks, forward,
    backward, clipping, optimiser). Skips fastai's end-of-epoch validation."""

    _order = 1000  # last: after IterationCallback (10) and PiecewiseConstantLR (20)

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []
        self.losses: list[float] = []

    def on_epoch_begin(self, **kwargs: Any) -> dict:
        """No validation pass at the end of the epoch."""
        return {'skip_validate': True}

    def on_batch_end(self, last_loss: torch.Tensor, train: bool, **kwargs: Any) -> None:
        """Stamp the end of a training step and keep its loss."""
        if train:
            sync_device(self.device)
            self.stamps.append(time.perf_counter())
            self.losses.append(float(last_loss))

    def gaps(self) -> list[float]:
        """Seconds between consecutive stamps: every step after the first of each fit."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


class QuietIterationCallback(IterationCallback):
    """Training's IterationCallback without its end-of-training evaluation and checkpoint (run after every fit)."""

    def on_train_end(self, exception: Any = None, **kwargs: Any) -> None:
        """Nothing: no evaluation, no checkpoint."""


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout of `model` to p = 0 (nn.Dropout and subclasses, MultiheadAttention's attention weights)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
    return model


def bench_learner(config: Config, model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device
                  ) -> tuple[Learner, list[Callback], StepTimer]:
    """A Learner from build_learner over an in-memory loader of `batch`, and the per-fit callbacks training uses
    (non-finite guard, lr schedule, iteration bookkeeping, clipping, ConAug for ConCLR) plus a StepTimer."""
    data = FixedBatchSet(batch)
    n = batch[0].shape[0]
    train_dl = DataLoader(data, batch_size=n, shuffle=False, drop_last=True, num_workers=0,
                          generator=torch.Generator())  # its own generator: no draw from the global RNG
    valid_dl = DataLoader(data, batch_size=n, num_workers=0)
    learn = build_learner(config, model, train_dl, valid_dl, device)
    logger = logging.Logger('benchmark.learner')  # not registered: nothing reaches the root logger
    logger.addHandler(logging.NullHandler())
    timer = StepTimer(device)
    callbacks: list[Callback] = [
        NonFiniteGuard(learn, config.training_max_nonfinite, logger),
        # no warm-up ramp: the plain loop runs at optimizer.lr throughout (the ramp changes values, not work)
        PiecewiseConstantLR(learn, config.optimizer_lr, config.optimizer_scheduler_periods,
                            config.optimizer_scheduler_gamma, 0, warmup_iters=0),
        QuietIterationCallback(learn, name='benchmark', workdir=tempfile.gettempdir(), logger=logger,
                               evaluate=lambda iteration: None, show_iters=config.training_show_iters,
                               eval_iters=2**62, save_iters=2**62)]
    if config.optimizer_clip_grad:
        callbacks.append(GradientClipping(learn, clip=config.optimizer_clip_grad))
    if is_conclr(model):
        callbacks.append(ConAugPretransform(side=config.conaug_side))
    return learn, callbacks + [timer], timer


def learner_fit(learn: Learner, callbacks: list[Callback], timer: StepTimer, lr: float, steps: int) -> list[float]:
    """`learn.fit(1)` over steps + 1 batches; the times of the last `steps` steps (the first is fit's start-up)."""
    learn.data.train_dl.dataset.repeats = steps + 1
    timer.stamps.clear()
    learn.fit(1, lr=lr, callbacks=callbacks)
    return timer.gaps()


@dataclass
class LearnerAgreement:
    """Learner vs plain loop after the same steps from the same weights and batch, dropout off."""

    plain_losses: list[float]
    learner_losses: list[float]
    weight_max_diff: float  # over every floating-point parameter and buffer (BatchNorm statistics too)
    weight_change: float  # largest change of the Learner copy's weights from the start: the steps did train

    @property
    def loss_rel_diff(self) -> float:
        """Relative difference of the last losses."""
        a, b = self.plain_losses[-1], self.learner_losses[-1]
        return abs(a - b) / max(abs(a), 1e-12)


def learner_agreement(config: Config, batch: tuple[torch.Tensor, ...], device: torch.device,
                      steps: int = LEARNER_CHECK_STEPS) -> LearnerAgreement:
    """Train two copies of one seed-0 model with dropout off for `steps` steps, one by make_train_step and one by
    the benchmark Learner, each from the same RNG state (ConAug's draws); their losses and weights should agree."""
    torch.manual_seed(0)
    model = disable_dropout(build_model(config))
    twin = copy.deepcopy(model)
    start = copy.deepcopy(model.state_dict())
    step = make_train_step(twin, config, batch, device)
    torch.manual_seed(1)
    plain = [float(step()) for _ in range(steps)]
    learn, callbacks, timer = bench_learner(config, model, batch, device)
    torch.manual_seed(1)
    learner_fit(learn, callbacks, timer, config.optimizer_lr, steps - 1)
    return LearnerAgreement(plain, list(timer.losses), _max_abs_diff(model.state_dict(), twin.state_dict()),
                            _max_abs_diff(model.state_dict(), start))


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over the floating-point entries of two state dicts with the same keys."""
    return max(((v - b[k].to(v.device)).abs().max().item() for k, v in a.items()
                if v.is_floating_point() and v.numel()), default=0.0)


def time_learner(s: Settings, name: str, steps: int) -> tuple[list[float], list[float]]:
    """(plain-loop step times, Learner step times) of one model at s.batch: two copies of the same weights, timed in
    s.learner_rounds alternating rounds of `steps` steps each, after s.warmup untimed steps of both."""
    config = model_config(name, s.size, s.config_path)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    torch.manual_seed(0)
    model = build_model(config)
    twin = copy.deepcopy(model)
    batch = make_batch(s.batch, charset, config.dataset_image_height, config.dataset_image_width, s.device)
    plain_step = make_train_step(twin, config, batch, s.device, channels_last=s.channels_last)
    if s.channels_last and s.device.type == 'cuda':
        model.to(s.device, memory_format=torch.channels_last)
    learn, callbacks, timer = bench_learner(config, model, batch, s.device)
    call_times(plain_step, s.warmup, s.device)
    learner_fit(learn, callbacks, timer, config.optimizer_lr, max(1, s.warmup))
    times = alternating_rounds({'fitted': partial(learner_fit, learn, callbacks, timer, config.optimizer_lr, steps),
                                'plain': partial(call_times, plain_step, steps, s.device)}, s.learner_rounds)
    del learn, callbacks, timer, plain_step, model, twin
    free_device_memory(s.device)
    return times['plain'], times['fitted']


def section_learner(s: Settings, report: Report) -> None:
    """7. A whole training step through fastai's Learner (training's callbacks) against the plain PyTorch loop
    (make_train_step) on a copy of the same model: the Learner's own overhead per step, and a same-work check."""
    steps = max(2, s.steps)
    quarter = s.size == 'quarter' and s.config_path is None
    for tag, name, label in (('abinet', ABINET, 'ABINet-Vision'), ('conclr', CONCLR, 'ConCLR-Vision')):
        plain, fitted = time_learner(s, name, steps)
        plain_ms, learner_ms = 1e3 * statistics.median(plain), 1e3 * statistics.median(fitted)
        how = f'median of {len(plain)} steps, {s.learner_rounds} alternating rounds; batch {s.batch}, amp_off'
        report.add(f'learner.{tag}.plain_ms', f'learner: plain PyTorch loop {label} step', plain_ms, 'ms', note=how)
        report.add(f'learner.{tag}.learner_ms', f'learner: fastai Learner {label} step', learner_ms, 'ms',
                   note='learn.fit, in-memory loader; guard, lr schedule, iteration log, clipping'
                        + (', ConAug' if tag == 'conclr' else ''))
        report.add(f'learner.{tag}.overhead_pct', f'learner: fastai Learner overhead per {label} step',
                   (learner_ms - plain_ms) / plain_ms * 100, '%',
                   ('<=', LEARNER_OVERHEAD_TARGET) if quarter else None,
                   note='(Learner - plain) / plain' + ('' if quarter else '; the 3 % target is for the quarter size'))
        config = model_config(name, s.size, s.config_path)
        charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
        check_batch = make_batch(min(s.batch, 8), charset, config.dataset_image_height, config.dataset_image_width,
                                 s.device, seed=9)
        agree = learner_agreement(config, check_batch, s.device)
        report.add(f'learner.{tag}.loss_rel_diff', f'learner: {label} loss, Learner vs plain loop',
                   agree.loss_rel_diff, 'frac', ('<=', LEARNER_LOSS_AGREEMENT),
                   note=f'step {LEARNER_CHECK_STEPS} from the same weights, dropout off: '
                        f'{agree.learner_losses[-1]:.6g} vs {agree.plain_losses[-1]:.6g}')
        report.add(f'learner.{tag}.weight_max_diff', f'learner: {label} weights, Learner vs plain loop',
                   agree.weight_max_diff, '', ('<=', LEARNER_WEIGHT_AGREEMENT),
                   note=f'largest |difference| after {LEARNER_CHECK_STEPS} steps, batch {check_batch[0].shape[0]}')
        free_device_memory(s.device)
