"""Benchmark harness: training throughput, ConAug, contrastive loss, input pipeline, inference and demo speed, and
the fastai Learner's own overhead per training step.

    python -m tools.benchmark --output results.json            # quarter-width model, batch 32, a few minutes on 2 cores
    python -m tools.benchmark --quick                           # tiny model, seconds (used by the test suite)
    python -m tools.benchmark --size official --batch 384 --device cuda --fit_memory --channels_last \
        --cudnn_benchmark --infer_batch 384 --output gpu.json     # the GPU rows (tools/gpu_check.sh runs this)
    python -m tools.benchmark --sections learner --threads 1    # Learner vs plain PyTorch loop, quarter width
    python -m tools.benchmark --sections onnx --official ../ABINet --onnx_profile   # PyTorch vs ONNX Runtime

Measures on the machine at hand, prints one table (metric, value, target, PASS/FAIL, note) and saves it as JSON.
Timings are medians over repeated runs after warm-up; targets are checked here, never in the tests.
"""

from __future__ import annotations

import support.fastai_compat  # noqa: F401  (must come before fastai)

import argparse
import contextlib
import copy
import gc
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from fastai.basic_train import Learner
from fastai.callback import Callback
from fastai.train import GradientClipping
from torch import nn
from torch.utils.data import DataLoader, Dataset

from callbacks.conaug import ConAugPretransform, conaug, draw_conaug_params
from callbacks.iteration import IterationCallback
from callbacks.lr_schedule import PiecewiseConstantLR
from callbacks.nonfinite import NonFiniteGuard
from losses.contrastive import contrastive_loss
from support.memory_format import enable_cudnn_autotune
from tools.loop_references import conaug_loop, contrastive_loss_loop
from training.builders import build_learner, build_loss, build_model, is_conclr, optimizer_func
from utils import REPO_ROOT, CharsetMapper, Config, tune_malloc

ABINET = 'modules.model_vision.BaseVision'
CONCLR = 'modules.model_conclr.ConCLR_Vision'
OFFICIAL_BATCH = 384  # the official training batch (dataset.train.batch_size in configs/template.yaml)
REAL_LMDB = REPO_ROOT / '..' / 'shared' / 'benchmarks' / 'IIIT5k_3000'
DEMO_SAMPLES = REPO_ROOT / '..' / 'shared' / 'samples' / 'abinet_demo'
QUARTER_CONFIG = REPO_ROOT / 'configs' / 'quickstart_conclr_vision_model.yaml'

# Config keys that fix the model's size and its training losses; a --config file contributes only these.
MODEL_KEY_PREFIXES = ('model_vision_', 'model_projection_', 'dataset_image_', 'dataset_max_length',
                      'dataset_charset_path', 'optimizer_', 'training_tau', 'training_alpha', 'training_include_eos',
                      'conaug_side')
MODEL_KEY_EXCLUDED = ('model_vision_loss_weight', 'model_vision_checkpoint')
TINY = {'model_vision_d_model': 16, 'model_vision_nhead': 2, 'model_vision_d_inner': 32, 'model_vision_backbone_ln': 1,
        'model_vision_resnet_widths': [4, 4, 8, 8, 16], 'model_vision_resnet_layers': [1, 1, 1, 1, 1],
        'model_vision_attention_channels': 4, 'model_projection_channels': 8}
SIZES = ('tiny', 'quarter', 'official')
GPU_TARGET_IMG_S = 2500  # issue 16: ABINet-Vision full-size bf16 training on one H100
RATIO_TARGET = {'cpu': 3.15, 'cuda': 3.1}  # ConCLR / ABINet step time (performance issue on CPU, issue 16 on GPU)
LOSS_AGREEMENT = 0.02  # issue 16: bf16 / fp16 final losses within 2 % of float32 after the same steps
LEARNER_OVERHEAD_TARGET = 3.0  # % : the fastai Learner's own cost per quarter-width step over the plain loop
LEARNER_WEIGHT_AGREEMENT = 1e-5  # largest weight difference, Learner vs plain loop, after the same steps, no dropout
LEARNER_LOSS_AGREEMENT = 1e-3  # relative difference of their last losses (a loose bound; equal in practice)
LEARNER_CHECK_STEPS = 2  # steps of that comparison
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (twice the forward: input and weight gradients)
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s, by a part of the device name.
BF16_PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.4), ('GH200', 989.4),
                    ('H200 NVL', 835.0), ('H200', 989.4), ('A100', 312.0))

# Every metric key the JSON holds (amp-off names; other precisions add '@bf16' / '@fp16' to the train. and infer.
# keys). A value is None when that line was skipped.
METRIC_KEYS = (
    'train.abinet.step_s', 'train.abinet.img_s', 'train.conclr.step_s', 'train.conclr.img_s', 'train.ratio',
    'train.abinet3n.step_s', 'train.conclr_overhead', 'train.abinet.mfu', 'flops.abinet.gflop', 'flops.matmul_tflops',
    'conaug.equal', 'conaug.b384.vec_s', 'conaug.b384.loop_s', 'conaug.b384.speedup', 'conaug.b384.copy_s',
    'conaug.b384.vs_copy', 'conaug.b384.frac_step',
    'conaug.batch.vec_s', 'conaug.batch.frac_step',
    'clr.equal', 'clr.max_rel_err', 'clr.n384.vec_s', 'clr.n384.loop_s', 'clr.n384.speedup', 'clr.n384.frac_step',
    'clr.batch.vec_s', 'clr.batch.frac_step', 'share.conaug_clr',
    'loader.aug.img_s', 'loader.noaug.img_s', 'loader.official.abinet.step_s', 'loader.official.conclr.step_s',
    'loader.consumption.img_s', 'loader.core_share.img_s', 'loader.ratio', 'loader.workers_needed',
    'infer.b1.img_s', 'infer.b64.img_s', 'infer.ratio',
    'demo.b1.img_s', 'demo.b64.img_s', 'demo.ratio', 'demo.ort.b1.img_s', 'demo.ort.b64.img_s',
    *(f'learner.{tag}.{m}' for tag in ('abinet', 'conclr')
      for m in ('plain_ms', 'learner_ms', 'overhead_pct', 'loss_rel_diff', 'weight_max_diff')),
    'render.plain.img_s', 'render.scene.img_s', 'render.scene.core_share',
)
SECTIONS = ('train', 'conaug', 'clr', 'losses', 'loader', 'infer', 'demo', 'learner', 'onnx', 'render')
PRECISION_SECTIONS = ('train.', 'infer.', 'flops.matmul', 'loss.', 'loader.workers_needed')
# Rows only a CUDA run has (per precision, with the suffix): peak memory and the data-sheet utilisation.
CUDA_METRIC_KEYS = ('train.abinet.peak_gib', 'train.conclr.peak_gib', 'train.abinet.mfu_datasheet@bf16')


# ----------------------------------------------------------------------------------------------- report


@dataclass
class Row:
    """One line of the table: a metric, its value, an optional target and the verdict."""

    key: str
    label: str
    value: float | None
    unit: str = ''
    target: str = ''
    status: str = ''
    note: str = ''


@dataclass
class Report:
    """Rows in print order; `metrics` maps each key to its value (None when skipped)."""

    rows: list[Row] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, label: str, value: float | None, unit: str = '', target: tuple[str, float] | None = None,
            note: str = '') -> float | None:
        """Record a metric; `target` is ('<=' | '<' | '>=', bound) and sets the PASS/FAIL verdict."""
        status, target_text = '', ''
        if target is not None:
            op, bound = target
            target_text = f'{op} {bound:g}'
            if value is None or not math.isfinite(value):
                status = 'SKIP' if value is None else 'FAIL'
            else:
                ok = {'<=': value <= bound, '<': value < bound, '>=': value >= bound}[op]
                status = 'PASS' if ok else 'FAIL'
        elif value is None:
            status = 'SKIP'
        self.rows.append(Row(key, label, None if value is None else float(value), unit, target_text, status, note))
        return value

    @property
    def metrics(self) -> dict[str, float | None]:
        """Metric key -> value."""
        return {r.key: r.value for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        """The JSON document: meta, metrics and rows."""
        return {'meta': self.meta, 'metrics': self.metrics, 'rows': [asdict(r) for r in self.rows]}

    def format(self) -> str:
        """The aligned text table."""
        header = ('metric', 'value', 'unit', 'target', 'result', 'note')
        lines = [[r.label, _fmt(r.value), r.unit, r.target, r.status, r.note] for r in self.rows]
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
        widths[-1] = len(header[-1])
        out = ['  '.join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
               '  '.join('-' * w for w in widths)]
        out += ['  '.join(c.ljust(w) if i < 5 else c for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                for line in lines]
        return '\n'.join(out)


def _fmt(value: float | None) -> str:
    if value is None:
        return 'skipped'
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f'{value:.4g}'
    return f'{value:.3e}'


# ----------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def call_times(fn: Callable[[], Any], calls: int, device: torch.device) -> list[float]:
    """Wall time of each of `calls` calls of `fn` (device synchronised)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def alternating_rounds(timers: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Each timer's step times over `rounds` rounds, the order of the timers reversed every other round, so that a
    drift in the machine's load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in timers}
    for round_ in range(max(1, rounds)):
        for name in (list(timers) if round_ % 2 == 0 else list(timers)[::-1]):
            times[name] += timers[name]()
    return times


def median_time(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of `fn` over `repeats` calls after `warmup` untimed calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    return statistics.median(call_times(fn, max(1, repeats), device))


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device,
                        repeats_of: dict[str, int] | None = None) -> dict[str, float]:
    """Median wall time of each function, timed in alternation (round k runs each once) so that a change in the
    machine's load hits all of them alike; `repeats_of` lowers the count for slow ones."""
    counts = {k: max(1, (repeats_of or {}).get(k, repeats)) for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for round_ in range(max(counts.values())):
        for key, fn in fns.items():
            if round_ < counts[key]:
                start = time.perf_counter()
                fn()
                _sync(device)
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for 'bf16' / 'fp16', a no-op for 'amp_off'."""
    if precision == 'amp_off':
        return contextlib.nullcontext()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------- models and data


def model_config(model_name: str, size: str = 'quarter', config_path: str | os.PathLike | None = None) -> Config:
    """Template config with the model-size keys of `size` (or of `config_path`) and `model.name` set."""
    config = Config()
    if config_path is not None or size == 'quarter':
        source = Config(config_path if config_path is not None else QUARTER_CONFIG)
        config.update({k: v for k, v in source.items()
                       if k.startswith(MODEL_KEY_PREFIXES) and k not in MODEL_KEY_EXCLUDED})
    elif size == 'tiny':
        config.update(TINY)
    elif size != 'official':
        raise ValueError(f'unknown model size {size!r}; expected one of {", ".join(SIZES)}')
    config.model_name = model_name
    config.model_vision_loss_weight = [1.0, 0.5, 0.5] if model_name == CONCLR else 1.0
    return config


def random_words(n: int, charset: CharsetMapper, rng: np.random.Generator, min_len: int = 3,
                 max_len: int = 12) -> list[str]:
    """n random words of the charset's characters, lengths uniform in [min_len, max_len]."""
    chars = [c for c in charset.chars[1:]]
    return [''.join(rng.choice(chars, size=int(rng.integers(min_len, max_len + 1)))) for _ in range(n)]


def make_batch(n: int, charset: CharsetMapper, h: int, w: int, device: torch.device, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A synthetic training batch: normalised-looking images N x 3 x H x W, one-hot targets N x T x C, lengths."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=gen)
    targets = [charset.onehot(word) for word in random_words(n, charset, rng)]
    labels = torch.stack([t[0] for t in targets]).float()
    lengths = torch.tensor([int(t[1]) for t in targets], dtype=torch.long)
    return images.to(device).contiguous(), labels.to(device).contiguous(), lengths.to(device)


def make_train_step(model: nn.Module, config: Config, batch: tuple[torch.Tensor, ...], device: torch.device,
                    precision: str = 'amp_off', channels_last: bool = False) -> Callable[[], torch.Tensor]:
    """One training step as training does it: (ConAug,) forward, loss, backward, clipping, Adam step; returns the
    step's loss. `channels_last` stores the model channels-last on CUDA, as training.channels_last does."""
    conclr = is_conclr(model)
    model.to(device).train()
    if channels_last and device.type == 'cuda':
        model.to(memory_format=torch.channels_last)
    opt = optimizer_func(config)(model.parameters(), lr=config.optimizer_lr)  # training's optimiser and loss
    loss_func = build_loss(config, conclr)
    pretransform = ConAugPretransform(side=config.conaug_side) if conclr else None
    scaler = torch.amp.GradScaler(device.type) if precision == 'fp16' else None
    clip = config.optimizer_clip_grad
    images, labels, lengths = batch

    def step() -> float:
        inputs, targets = [images], (labels, lengths)
        if pretransform is not None:  # the fastai callback's code path, as in training
            views = pretransform.on_batch_begin(last_input=images, last_target=(labels, lengths), train=True)
            inputs, targets = views['last_input'], views['last_target']
        with autocast(device, precision):
            outputs = model(*inputs)
            loss = loss_func(outputs, *targets)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return loss.detach()

    return step


# ----------------------------------------------------------------------------------------------- loop-reference checks


def conaug_check(images: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, seed: int = 0) -> bool:
    """Whether `conaug` and `conaug_loop` agree on both views of a `sample`-side draw (both placements)."""
    gen = torch.Generator().manual_seed(seed)
    perm1, left1, perm2, left2 = draw_conaug_params(images.shape[0], 'sample', generator=gen, device=images.device)
    for perm, left in ((perm1, left1), (perm2, left2)):
        vec = conaug(images, labels, lengths, perm, left)
        ref = conaug_loop(images, labels, lengths, perm, left)
        if not torch.allclose(vec[0], ref[0], rtol=1e-5, atol=1e-6):
            return False
        if not all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(vec[1:], ref[1:])):
            return False
    return True


def contrastive_inputs(n: int, t_slots: int, e: int, num_classes: int, device: torch.device, seed: int = 0,
                       max_len: int = 12) -> tuple[torch.Tensor, ...]:
    """z1, z2 (unit, requiring grad), labels1, labels2, lengths1, lengths2, valid from a ConAug of random words."""
    gen = torch.Generator().manual_seed(seed)
    chars = torch.randint(3, max_len + 1, (n,), generator=gen).clamp(max=t_slots - 1)
    labels = torch.zeros(n, t_slots, dtype=torch.long)
    for i, c in enumerate(chars.tolist()):
        labels[i, :c] = torch.randint(1, num_classes, (c,), generator=gen)
    onehot = F.one_hot(labels, num_classes).float()
    lengths = chars + 1
    dummy = torch.zeros(n, 1, 1, 2)
    perm1, left1, perm2, left2 = draw_conaug_params(n, 'fixed', generator=gen)
    _, y1, l1, v1 = conaug(dummy, onehot, lengths, perm1, left1)
    _, y2, l2, v2 = conaug(dummy, onehot, lengths, perm2, left2)
    z1 = F.normalize(torch.randn(n, t_slots, e, generator=gen), dim=-1).to(device).requires_grad_(True)
    z2 = F.normalize(torch.randn(n, t_slots, e, generator=gen), dim=-1).to(device).requires_grad_(True)
    return (z1, z2, y1.argmax(-1).to(device), y2.argmax(-1).to(device), l1.to(device), l2.to(device),
            (v1 & v2).to(device))


def contrastive_check(device: torch.device, n: int = 8, t_slots: int = 26, e: int = 16, tau: float = 2.0,
                      seed: int = 1) -> tuple[bool, float]:
    """(equal to 1e-4 relative in value and gradient, largest relative error) of vectorised vs loop loss."""
    worst = 0.0
    for include_eos in (False, True):
        inputs = contrastive_inputs(n, t_slots, e, 37, device, seed)
        z1, z2 = inputs[0], inputs[1]
        vec = contrastive_loss(*inputs[:6], tau=tau, include_eos=include_eos, valid=inputs[6])
        g_vec = torch.autograd.grad(vec, (z1, z2))
        ref = contrastive_loss_loop(*inputs[:6], tau=tau, include_eos=include_eos, valid=inputs[6])
        g_ref = torch.autograd.grad(ref, (z1, z2))
        worst = max(worst, abs(vec.item() - ref.item()) / max(abs(ref.item()), 1e-12))
        for a, b in zip(g_vec, g_ref):
            worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item())
    return worst <= 1e-4, worst


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class Settings:
    """Everything the sections need, from the command line."""

    device: torch.device
    size: str
    config_path: str | None
    batch: int
    steps: int
    warmup: int
    precisions: list[str]
    conaug_batch: int
    clr_n: int
    clr_loop_n: int
    lmdb: str | None
    loader_samples: int
    official_size: str
    official_probe_batch: int
    official_steps: int
    infer_batches: tuple[int, int]
    infer_repeats: int
    demo_copies: int
    quick: bool
    fit_batch: bool = False
    fit_memory: bool = False
    channels_last: bool = False
    loss_steps: int = 10
    loss_batch: int = 64
    learner_rounds: int = 3
    onnx_sizes: tuple[str, ...] = ('quarter', 'official')
    onnx_batches: tuple[int, ...] = (1, 32)
    official_root: str | None = None
    onnx_profile: bool = False


@dataclass
class TrainResult:
    """Median step times of one precision's training line-up, at the batch that ran."""

    batch: int
    step_s: dict[str, float]  # 'abinet', 'conclr', 'abinet3n'


def free_device_memory(device: torch.device) -> None:
    """Drop freed tensors and hand the allocator's cache back (between model line-ups)."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def first_step_peak(step: Callable[[], Any], device: torch.device, base: int) -> float | None:
    """Run one (untimed) step; its peak GPU allocation above `base` bytes in GiB (None off CUDA)."""
    if device.type != 'cuda':
        step()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == 'cuda' else 0


def time_train(s: Settings, precision: str, batch: int) -> tuple[TrainResult, dict[str, int], dict[str, float | None]]:
    """Interleaved median step times of ABINet (N), ConCLR (N) and ABINet (3N); parameters and peak GiB per model.

    Each model first runs one step alone, which measures its peak memory (weights, gradients, Adam state,
    activations, the batch) and is one more untimed warm-up step.
    """
    steps, params, peaks = {}, {}, {}
    line_up = (('abinet', ABINET, batch), ('conclr', CONCLR, batch), ('abinet3n', ABINET, 3 * batch))
    for tag, name, batch_size in line_up:
        config = model_config(name, s.size, s.config_path)
        charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
        torch.manual_seed(0)
        model = build_model(config)
        params[tag] = sum(p.numel() for p in model.parameters())
        base = _allocated(s.device)
        data = make_batch(batch_size, charset, config.dataset_image_height, config.dataset_image_width, s.device)
        steps[tag] = make_train_step(model, config, data, s.device, precision, channels_last=s.channels_last)
        peaks[tag] = first_step_peak(steps[tag], s.device, base)
    times = interleaved_medians(steps, s.steps, s.warmup, s.device)
    return TrainResult(batch, times), params, peaks


def fallback_batches(batch: int) -> list[int]:
    """The batch, then 2/3, 1/2, 1/3, 1/4, 1/6 and 1/8 of it (multiples of 8 where possible): what --fit_batch tries."""
    out = [batch]
    for num, den in ((2, 3), (1, 2), (1, 3), (1, 4), (1, 6), (1, 8)):
        b = batch * num // den
        b = b - b % 8 if b >= 16 else b
        if 0 < b < out[-1]:
            out.append(b)
    return out


def lineup_bytes(estimates: dict[str, Any], batch: int) -> float:
    """Bytes the training line-up needs at `batch` by the memory estimate: the three models' weights, gradients and
    Adam state are held at once (ABINet twice, ConCLR), the activations of one step at a time (the larger of ConCLR
    at N, three views, and ABINet at 3N), plus the estimate's fixed reserve."""
    from support.memory_estimate import RESERVE

    abinet, conclr = estimates['abinet'], estimates['conclr']
    activations = max(conclr.with_batch(batch).activation_bytes, abinet.with_batch(3 * batch).activation_bytes)
    return 2 * abinet.state_bytes + conclr.state_bytes + activations + RESERVE


def memory_batch(s: Settings, free: float | None = None) -> tuple[int, str]:
    """The largest batch <= s.batch (a multiple of 8 when 8 or more) whose training line-up fits the device's
    free memory by support/memory_estimate.py, measured in float32 (the costliest precision; every precision then
    runs at the same batch); (batch, a note that says why)."""
    from support.memory_estimate import GIB, free_memory, measure

    if free is None:
        free = free_memory(s.device)
    estimates = {}
    for tag, name in (('abinet', ABINET), ('conclr', CONCLR)):
        config = model_config(name, s.size, s.config_path)
        torch.manual_seed(0)
        model = build_model(config)
        shape = (3, config.dataset_image_height, config.dataset_image_width)
        estimates[tag] = measure(model, shape, 3 if is_conclr(model) else 1, s.device, None, s.batch, None)
        del model
    free_device_memory(s.device)
    if free is None:
        return s.batch, f'batch {s.batch}: free memory unknown on {s.device}'
    candidates = [b for b in range(s.batch, 0, -1) if b == s.batch or b < 8 or b % 8 == 0]
    batch = next((b for b in candidates if lineup_bytes(estimates, b) <= free), 1)
    need = lineup_bytes(estimates, batch) / GIB
    verdict = ' (not even that fits: expect out-of-memory rows)' if need * GIB > free else ''
    return batch, (f'batch {batch} of {s.batch} asked: the line-up needs about {need:.1f} GiB by the memory '
                   f'estimate, {free / GIB:.1f} GiB free on {s.device}{verdict}')


def fitting_train(s: Settings, precision: str) -> tuple[TrainResult, dict[str, int], dict[str, float | None]] | None:
    """time_train at s.batch; with --fit_batch, at the next smaller batch after each CUDA out-of-memory error
    (None: nothing fits). The three models share the batch so that the step ratio compares like with like."""
    for batch in fallback_batches(s.batch) if s.fit_batch else [s.batch]:
        result = None
        try:
            result = time_train(s, precision, batch)
        except torch.OutOfMemoryError:
            pass  # handled below, once the traceback (holding the tensors) is gone
        free_device_memory(s.device)
        if result is not None:
            return result
    return None


def section_train(s: Settings, report: Report, flops: dict[str, float] | None) -> dict[str, TrainResult]:
    """1. Training throughput of ABINet-Vision and ConCLR-Vision at the same size and batch, per precision.

    The steps are timed in alternation, plus ABINet-Vision at batch 3N: ConCLR's step runs 3N images, so
    ConCLR(N) / ABINet(3N) is ConCLR's own overhead (ConAug, projection head, losses), apart from how the
    model's cost grows with the batch. `flops` (from model_flops) gives the model FLOP utilisation rows.
    """
    results: dict[str, TrainResult] = {}
    for precision in s.precisions:
        suffix = '' if precision == 'amp_off' else f'@{precision}'
        fitted = fitting_train(s, precision)
        if fitted is None:
            tried = ' and every smaller one tried' if s.fit_batch else ' (try --fit_batch)'
            report.add(f'train.abinet.step_s{suffix}', f'train ABINet-Vision step [{precision}]', None, 's',
                       note=f'skipped: out of GPU memory at batch {s.batch}{tried}')
            continue
        result, params, peaks = fitted
        results[precision] = result
        report_train_rows(s, report, precision, result, params, peaks, flops)
    return results


def report_train_rows(s: Settings, report: Report, precision: str, result: TrainResult, params: dict[str, int],
                      peaks: dict[str, float | None], flops: dict[str, float] | None) -> None:
    """The rows of one precision's training line-up."""
    suffix = '' if precision == 'amp_off' else f'@{precision}'
    times, batch = result.step_s, result.batch
    fitted = '' if batch == s.batch else f' (batch {s.batch} did not fit)'
    cuda_full = s.device.type == 'cuda' and s.size == 'official' and s.config_path is None
    for tag, label in (('abinet', 'ABINet-Vision'), ('conclr', 'ConCLR-Vision')):
        report.add(f'train.{tag}.step_s{suffix}', f'train {label} step [{precision}]', times[tag], 's',
                   note=f'median of {s.steps} after {s.warmup + 1} warm-up, interleaved; batch {batch}{fitted}, '
                        f'{params[tag]:,} params')
        target = (('>=', GPU_TARGET_IMG_S) if cuda_full and tag == 'abinet' and precision == 'bf16' else None)
        report.add(f'train.{tag}.img_s{suffix}', f'train {label} images/s [{precision}]', batch / times[tag],
                   'img/s', target, note='issue 16 target: full size, bf16, one H100' if target else
                   'original images (batch size) per second')
        if peaks[tag] is not None:
            report.add(f'train.{tag}.peak_gib{suffix}', f'train {label} peak GPU memory [{precision}]', peaks[tag],
                       'GiB', note=f'max_memory_allocated over one step at batch {batch}, with weights and Adam state')
    report.add(f'train.ratio{suffix}', f'train ConCLR / ABINet step time [{precision}]',
               times['conclr'] / times['abinet'], 'x', ('<=', RATIO_TARGET[s.device.type]),
               note='ConCLR runs 3N images (original + 2 ConAug views) per N originals')
    report.add(f'train.abinet3n.step_s{suffix}', f'train ABINet-Vision step at batch {3 * batch} [{precision}]',
               times['abinet3n'], 's', note='as many images as a ConCLR step')
    report.add(f'train.conclr_overhead{suffix}', f'train ConCLR(N) / ABINet(3N) step time [{precision}]',
               times['conclr'] / times['abinet3n'], 'x',
               note='ConCLR\'s own cost: ConAug, projection head, 3 CE + contrastive loss')
    if flops is None:
        return
    achieved = batch / times['abinet'] * TRAIN_FLOPS_PER_FORWARD * flops['forward'] / 1e12
    report.add(f'train.abinet.mfu{suffix}', f'train ABINet-Vision model FLOP utilisation [{precision}]',
               achieved / flops[precision], 'frac',
               note=f'{achieved:.3g} TFLOP/s (3 x forward FLOPs) / measured {precision} matmul '
                    f'{flops[precision]:.3g} TFLOP/s')
    if flops.get('datasheet') and precision == 'bf16':
        report.add('train.abinet.mfu_datasheet@bf16', 'train ABINet-Vision FLOP utilisation of the data-sheet peak '
                   '[bf16]', achieved / flops['datasheet'], 'frac',
                   note=f'dense bf16 peak {flops["datasheet"]:g} TFLOP/s of {torch.cuda.get_device_name(s.device)}')


def model_flops(s: Settings) -> dict[str, float]:
    """Forward FLOPs per image of ABINet-Vision (torch's FLOP counter), and the measured matmul TFLOP/s per
    precision (plus the data-sheet bf16 peak of a known GPU) for the utilisation rows."""
    from torch.utils.flop_counter import FlopCounterMode

    config = model_config(ABINET, s.size, s.config_path)
    torch.manual_seed(0)
    model = build_model(config).to(s.device).train()  # train mode: the encoder's fused eval path has no counter
    x = torch.randn(2, 3, config.dataset_image_height, config.dataset_image_width, device=s.device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    out: dict[str, float] = {'forward': counter.get_total_flops() / 2}
    del model, x
    n = 8192 if s.device.type == 'cuda' else (256 if s.quick else 1024)
    for precision in s.precisions:
        dtype = {'amp_off': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
        a = torch.randn(n, n, device=s.device).to(dtype)
        b = torch.randn(n, n, device=s.device).to(dtype)
        out[precision] = 2 * n ** 3 / median_time(lambda: a @ b, 5, 2, s.device) / 1e12
    name = torch.cuda.get_device_name(s.device) if s.device.type == 'cuda' else ''
    out['datasheet'] = next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), 0.0)
    return out


def report_flops(s: Settings, report: Report, flops: dict[str, float]) -> None:
    """The FLOP rows: forward GFLOP per image and the matmul yardstick per precision."""
    report.add('flops.abinet.gflop', 'ABINet-Vision forward GFLOP per image', flops['forward'] / 1e9, 'GFLOP',
               note='torch.utils.flop_counter; a training step counts 3 x forward')
    for precision in s.precisions:
        suffix = '' if precision == 'amp_off' else f'@{precision}'
        report.add(f'flops.matmul_tflops{suffix}', f'square matmul throughput [{precision}]', flops[precision],
                   'TFLOP/s', note='the achievable peak the utilisation rows divide by')


@dataclass
class StepRef:
    """The ConCLR training step that ConAug's and the loss's shares are taken of."""

    step_s: float
    batch: int
    precision: str

    @staticmethod
    def fastest(results: dict[str, TrainResult]) -> StepRef | None:
        """The precision whose ConCLR step is the shortest (the strictest denominator), None when none ran."""
        if not results:
            return None
        precision = min(results, key=lambda p: results[p].step_s['conclr'] / results[p].batch)
        return StepRef(results[precision].step_s['conclr'], results[precision].batch, precision)


def section_conaug(s: Settings, report: Report, step: StepRef) -> None:
    """2. ConAug (both views of a batch, the callback's code path) against a per-sample loop."""
    config = model_config(CONCLR, s.size, s.config_path)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    pretransform = ConAugPretransform(side=config.conaug_side)

    def vectorised(batch: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
        x, y, lengths = batch
        return lambda: pretransform.on_batch_begin(last_input=x, last_target=(y, lengths), train=True)

    def loop(batch: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
        x, y, lengths = batch

        def run() -> None:
            perm1, left1, perm2, left2 = draw_conaug_params(x.shape[0], config.conaug_side, device=x.device)
            conaug_loop(x, y, lengths, perm1, left1)
            conaug_loop(x, y, lengths, perm2, left2)
        return run

    small = make_batch(min(s.conaug_batch, 64), charset, 32, 128, s.device, seed=3)
    report.add('conaug.equal', 'ConAug vectorised == per-sample loop', float(conaug_check(*small)), 'bool',
               ('>=', 1), note=f'{small[0].shape[0]} samples, 32x128, side=sample, images to 1e-6, targets exact')

    big = make_batch(s.conaug_batch, charset, 32, 128, s.device, seed=4)
    repeats = max(3, s.steps)
    views = torch.empty(2 * s.conaug_batch, *big[0].shape[1:], device=s.device)  # what ConAug writes
    timed = interleaved_medians({'vec': vectorised(big), 'loop': loop(big), 'copy': lambda: views.clone()},
                                repeats, 1, s.device)
    vec, ref, copy = timed['vec'], timed['loop'], timed['copy']
    scaled_step = step.step_s * s.conaug_batch / step.batch
    step_note = (f'ConCLR {step.precision} step measured at batch {step.batch}' if step.batch == s.conaug_batch else
                 f'vs ConCLR {step.precision} step scaled linearly from batch {step.batch} to {s.conaug_batch}')
    n = s.conaug_batch
    report.add('conaug.b384.vec_s', f'ConAug batch {n} (2 views) vectorised', vec, 's',
               note=f'32x128, C={charset.num_classes}, T={config.dataset_max_length + 1}; callback on_batch_begin')
    report.add('conaug.b384.loop_s', f'ConAug batch {n} (2 views) per-sample loop', ref, 's')
    report.add('conaug.b384.speedup', f'ConAug batch {n} speed-up over loop', ref / vec, 'x', ('>=', 20))
    report.add('conaug.b384.copy_s', f'copy of ConAug\'s output (2 x {n} images)', copy, 's',
               note='a memory-bound floor: clone of a tensor the size of both views')
    report.add('conaug.b384.vs_copy', f'ConAug batch {n} / copy of its output', vec / copy, 'x')
    report.add('conaug.b384.frac_step', f'ConAug batch {n} / ConCLR step', vec / scaled_step, 'frac', ('<', 0.02),
               note=step_note)

    model_batch = make_batch(step.batch, charset, config.dataset_image_height, config.dataset_image_width, s.device,
                             5)
    vec_b = median_time(vectorised(model_batch), 2 * repeats, 1, s.device)
    report.add('conaug.batch.vec_s', f'ConAug model batch {step.batch} vectorised', vec_b, 's',
               note=f'{config.dataset_image_height}x{config.dataset_image_width}')
    report.add('conaug.batch.frac_step', f'ConAug model batch {step.batch} / ConCLR step', vec_b / step.step_s, 'frac',
               ('<', 0.02), note=f'both measured at the model batch; {step.precision} step')


def section_contrastive(s: Settings, report: Report, step: StepRef) -> None:
    """3. Contrastive loss forward + backward against a per-anchor loop."""
    config = model_config(CONCLR, s.size, s.config_path)
    t_slots = config.dataset_max_length + 1
    ok, worst = contrastive_check(s.device, n=min(8, s.clr_n), t_slots=t_slots)
    report.add('clr.equal', 'contrastive vectorised == per-anchor loop', float(ok), 'bool', ('>=', 1),
               note=f'value and gradients, N=8, T={t_slots}, E=16, include_eos both')
    report.add('clr.max_rel_err', 'contrastive largest relative error', worst, '', ('<=', 1e-4))

    def fwd_bwd(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], n: int | None = None
                ) -> Callable[[], None]:
        sub = inputs if n is None else tuple(t[:n].detach().requires_grad_(t.requires_grad) for t in inputs)

        def run() -> None:
            loss = fn(*sub[:6], tau=config.training_tau, include_eos=config.training_include_eos, valid=sub[6])
            loss.backward()
        return run

    repeats = max(3, s.steps)
    big = contrastive_inputs(s.clr_n, t_slots, 128, 37, s.device, seed=2)
    vec = median_time(fwd_bwd(contrastive_loss, big), repeats, 1, s.device)
    loop_n = min(s.clr_loop_n, s.clr_n)
    ref = median_time(fwd_bwd(contrastive_loss_loop, big, loop_n), 1, 0, s.device) * s.clr_n / loop_n
    scaled_step = step.step_s * s.clr_n / step.batch
    n = s.clr_n
    report.add('clr.n384.vec_s', f'contrastive N={n} fwd+bwd vectorised', vec, 's', note=f'T={t_slots}, E=128')
    report.add('clr.n384.loop_s', f'contrastive N={n} fwd+bwd per-anchor loop', ref, 's',
               note=f'timed on {loop_n} samples, extrapolated linearly in N')
    report.add('clr.n384.speedup', f'contrastive N={n} speed-up over loop', ref / vec, 'x')
    report.add('clr.n384.frac_step', f'contrastive N={n} / ConCLR step', vec / scaled_step, 'frac', ('<', 0.02),
               note=(f'ConCLR {step.precision} step measured at batch {step.batch}' if step.batch == n else
                     f'vs ConCLR {step.precision} step scaled linearly from batch {step.batch} to {n}'))
    e = config.model_projection_channels
    at_batch = contrastive_inputs(step.batch, t_slots, e, 37, s.device, seed=6)
    vec_b = median_time(fwd_bwd(contrastive_loss, at_batch), repeats, 1, s.device)
    report.add('clr.batch.vec_s', f'contrastive model batch {step.batch} fwd+bwd', vec_b, 's', note=f'E={e}')
    report.add('clr.batch.frac_step', f'contrastive model batch {step.batch} / ConCLR step', vec_b / step.step_s,
               'frac', ('<', 0.02), note=f'both measured at the model batch; {step.precision} step')


def report_share(report: Report, step: StepRef) -> None:
    """ConAug and the contrastive loss together, as a share of the ConCLR step (issue 16: < 2 %)."""
    metrics = report.metrics
    parts = [metrics.get('conaug.batch.vec_s'), metrics.get('clr.batch.vec_s')]
    share = None if None in parts else sum(parts) / step.step_s
    report.add('share.conaug_clr', f'ConAug + contrastive loss / ConCLR step, batch {step.batch}', share, 'frac',
               ('<', 0.02), note=f'{step.precision} step, the fastest measured' if share is not None else
               'skipped: needs the conaug and clr sections')


def final_loss(s: Settings, name: str, precision: str, batch: int) -> float:
    """The loss of the last of s.loss_steps training steps from seed-0 weights on one fixed batch."""
    config = model_config(name, s.size, s.config_path)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    torch.manual_seed(0)  # the same weights, dropout and ConAug draws for every precision
    model = build_model(config)
    data = make_batch(batch, charset, config.dataset_image_height, config.dataset_image_width, s.device, seed=8)
    step = make_train_step(model, config, data, s.device, precision, channels_last=s.channels_last)
    for _ in range(s.loss_steps - 1):
        step()
    loss = float(step())
    del step, model, data
    free_device_memory(s.device)
    return loss


def section_losses(s: Settings, report: Report) -> None:
    """6. The final training loss of each precision after the same steps from the same weights and batch, against
    float32 (issue 16: bf16 and fp16 within 2 %). Needs more than one precision."""
    if len(s.precisions) < 2:
        return
    batch = min(s.batch, s.loss_batch)
    for tag, name, label in (('abinet', ABINET, 'ABINet-Vision'), ('conclr', CONCLR, 'ConCLR-Vision')):
        losses = {p: final_loss(s, name, p, batch) for p in s.precisions}
        for precision, loss in losses.items():
            suffix = '' if precision == 'amp_off' else f'@{precision}'
            report.add(f'loss.{tag}.final{suffix}', f'{label} loss after {s.loss_steps} steps [{precision}]', loss,
                       '', note=f'batch {batch}, one fixed random batch, seed-0 weights')
            if precision != 'amp_off':
                report.add(f'loss.{tag}.vs_fp32{suffix}', f'{label} final loss vs float32 [{precision}]',
                           abs(loss - losses['amp_off']) / abs(losses['amp_off']), 'frac', ('<', LOSS_AGREEMENT))


@contextlib.contextmanager
def loader_lmdb(path: str | None, samples: int) -> Iterator[tuple[str, str]]:
    """(LMDB path, description): the given or real one when present, else a synthetic one rendered in a temp dir."""
    candidate = Path(path) if path is not None else REAL_LMDB
    if (candidate / 'data.mdb').is_file():
        yield str(candidate), f'real LMDB {candidate.resolve().name}'
        return
    from tools import render_synthetic
    tmp = tempfile.mkdtemp(prefix='benchmark_lmdb_')
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its summary would break up the table
            render_synthetic.main(['--output', tmp, '--num_train', str(samples), '--num_test', '1', '--workers', '1',
                                   '--vocab_size', '200'])
        yield os.path.join(tmp, 'train'), f'synthetic LMDB ({candidate} not found)'
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _official_step(s: Settings, name: str) -> tuple[float, str]:
    """Step time of the official-size model at the official batch, measured at a probe batch and scaled."""
    config = model_config(name, s.official_size)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    torch.manual_seed(0)
    model = build_model(config)
    batch = make_batch(s.official_probe_batch, charset, config.dataset_image_height, config.dataset_image_width,
                       s.device, seed=7)
    step = make_train_step(model, config, batch, s.device)
    probe = median_time(step, s.official_steps, 1, s.device)
    scaled = probe * OFFICIAL_BATCH / s.official_probe_batch
    how = ('measured at batch 384' if s.official_probe_batch == OFFICIAL_BATCH else
           f'{s.official_size} model at batch {s.official_probe_batch}, scaled linearly to 384')
    return scaled, how


def section_loader(s: Settings, report: Report, train: dict[str, TrainResult] | None = None) -> None:
    """4. Input pipeline: images/s of one worker (ImageDataset.__getitem__ in this process) vs consumption, and
    the augmenting workers each measured training step needs."""
    from dataset import ImageDataset, close_lmdb

    config = model_config(ABINET, s.size, s.config_path)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    with loader_lmdb(s.lmdb, s.loader_samples) as (path, what):
        rates = {}
        for aug in (True, False):
            ds = ImageDataset(path, charset, True, img_h=config.dataset_image_height,
                              img_w=config.dataset_image_width, data_aug=aug, seed=0)
            count = min(s.loader_samples, len(ds))
            for i in range(min(4, count)):  # warm-up: open the LMDB, first decodes
                ds[i]
            start = time.perf_counter()
            for i in range(count):
                ds[i]
            rates[aug] = count / (time.perf_counter() - start)
            report.add(f'loader.{"aug" if aug else "noaug"}.img_s',
                       f'loader one worker, data_aug {aug}', rates[aug], 'img/s',
                       note=f'{what}, {count} samples, training mode')
        close_lmdb(path)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    steps = {}
    measured = (train or {}).get('amp_off') if s.size == 'official' and s.config_path is None else None
    for tag, name in (('abinet', ABINET), ('conclr', CONCLR)):
        if measured is not None:
            steps[tag] = measured.step_s[tag] * OFFICIAL_BATCH / measured.batch
            how = f'the training rows\' step at batch {measured.batch}' + (
                '' if measured.batch == OFFICIAL_BATCH else ', scaled linearly to 384')
        else:
            steps[tag], how = _official_step(s, name)
        report.add(f'loader.official.{tag}.step_s', f'{s.official_size}-size {tag} step at batch 384', steps[tag], 's',
                   note=how)
    consumption = OFFICIAL_BATCH / min(steps.values())
    report.add('loader.consumption.img_s', 'training consumption at batch 384', consumption, 'img/s',
               note='ABINet-Vision, the faster consumer (ConCLR takes ~1/3 of that)')
    share = consumption / cores
    report.add('loader.core_share.img_s', f'one core\'s share ({cores} cores)', share, 'img/s')
    verdict = 'workers = cores is enough' if rates[True] >= share else 'workers = cores is NOT enough'
    report.add('loader.ratio', 'one augmenting worker / core share', rates[True] / share, 'x', ('>=', 1),
               note=verdict)
    for precision, result in (train or {}).items():
        suffix = '' if precision == 'amp_off' else f'@{precision}'
        need = result.batch / result.step_s['abinet']
        report.add(f'loader.workers_needed{suffix}', f'augmenting workers to feed the ABINet step [{precision}]',
                   float(math.ceil(need / rates[True])), 'workers',
                   note=f'{need:.0f} img/s at batch {result.batch} / {rates[True]:.0f} img/s per worker; '
                        f'{cores} cores here')


def section_infer(s: Settings, report: Report) -> None:
    """5a. Evaluation-mode images/s of the vision model at two batch sizes, per precision."""
    config = model_config(ABINET, s.size, s.config_path)
    torch.manual_seed(0)
    model = build_model(config).to(s.device).eval()
    if s.channels_last and s.device.type == 'cuda':
        model.to(memory_format=torch.channels_last)
    small, large = s.infer_batches
    for precision in s.precisions:
        suffix = '' if precision == 'amp_off' else f'@{precision}'
        runs = {}
        for b in (small, large):
            x = torch.randn(b, 3, config.dataset_image_height, config.dataset_image_width, device=s.device)

            @torch.no_grad()
            def run(x: torch.Tensor = x, precision: str = precision) -> None:
                with autocast(s.device, precision):
                    model(x)
            runs[b] = run
        times = interleaved_medians(runs, max(2, s.steps), 1, s.device, repeats_of={small: s.infer_repeats})
        rates = {b: b / t for b, t in times.items()}
        report.add(f'infer.b1.img_s{suffix}', f'eval batch {small} [{precision}]', rates[small], 'img/s',
                   note='eval mode, no_grad, vision model')
        report.add(f'infer.b64.img_s{suffix}', f'eval batch {large} [{precision}]', rates[large], 'img/s')
        report.add(f'infer.ratio{suffix}', f'eval batch {large} / batch {small} [{precision}]',
                   rates[large] / rates[small], 'x', ('>=', 3))


def _demo_main() -> Callable[[list[str]], Any] | None:
    """demo.main when demo.py exists and has main(argv), else None."""
    if not (REPO_ROOT / 'demo.py').is_file():
        return None
    try:
        demo = importlib.import_module('demo')
    except Exception:
        return None
    main = getattr(demo, 'main', None)
    return main if callable(main) else None


def _demo_flags(demo_main: Callable[..., Any]) -> set[str]:
    """The long options demo.py's parser knows (read from its parse_args, when it has one)."""
    module = sys.modules.get(demo_main.__module__)
    parse = getattr(module, 'parse_args', None)
    try:
        source = inspect.getsource(parse if parse is not None else module)
    except (OSError, TypeError):
        return set()
    import re
    return set(re.findall(r"'(--[a-z_]+)'", source))


def _demo_argv(s: Settings, flags: set[str], *, config_file: Path, folder: Path, batch: int, checkpoint: Path,
               output: Path) -> list[str]:
    """demo.py's arguments for one timed run, limited to the flags it has."""
    argv = ['--config', str(config_file), '--input', str(folder), '--batch_size', str(batch)]
    if '--checkpoint' in flags:
        argv += ['--checkpoint', str(checkpoint)]
    if '--cuda' in flags:
        argv += ['--cuda', str(s.device.index or 0) if s.device.type == 'cuda' else '-1']
    elif '--device' in flags:
        argv += ['--device', str(s.device)]
    if '--image_only' in flags:
        argv.append('--image_only')
    if '--output' in flags:
        argv += ['--output', str(output)]
    return argv


def section_demo(s: Settings, report: Report) -> None:
    """5b. demo.py on a folder of sample images copied N times, at batch 1 and 64."""
    demo_main = _demo_main()
    small, large = s.infer_batches
    keys = (('demo.b1.img_s', f'demo batch {small}'), ('demo.b64.img_s', f'demo batch {large}'),
            ('demo.ratio', f'demo batch {large} / batch {small}'))
    samples = sorted(DEMO_SAMPLES.glob('*.png')) if DEMO_SAMPLES.is_dir() else []
    reason = ('skipped: demo.py missing' if demo_main is None else
              'skipped: no sample images' if not samples else '')
    flags = _demo_flags(demo_main) if demo_main is not None else set()
    if not reason and not {'--config', '--input', '--batch_size'} <= flags:
        reason = f'skipped: demo.py lacks --config/--input/--batch_size (has {sorted(flags)})'
    if reason:
        for key, label in keys:
            report.add(key, label, None, 'img/s' if key != 'demo.ratio' else 'x',
                       ('>=', 3) if key == 'demo.ratio' else None, note=reason)
        for key, b in (('demo.ort.b1.img_s', small), ('demo.ort.b64.img_s', large)):
            report.add(key, f'demo --backend onnxruntime batch {b}', None, 'img/s', note=reason)
        return

    from support.checkpoint import save_checkpoint

    config = model_config(ABINET, s.size, s.config_path)
    tmp = Path(tempfile.mkdtemp(prefix='benchmark_demo_'))
    try:
        folder = tmp / 'images'
        folder.mkdir()
        for k in range(s.demo_copies):
            for path in samples:
                shutil.copy(path, folder / f'{k:04d}_{path.name}')
        count = s.demo_copies * len(samples)
        torch.manual_seed(0)
        checkpoint = save_checkpoint(tmp / 'model.pth', build_model(config))
        config_file = tmp / 'benchmark.yaml'
        config_file.write_text(_yaml_of(config), encoding='utf-8')
        def timed(argv: list[str]) -> float:
            with open(os.devnull, 'w') as devnull, contextlib.redirect_stdout(devnull):
                start = time.perf_counter()
                status = demo_main(argv)
                seconds = time.perf_counter() - start
            if status not in (0, None):
                raise RuntimeError(f'demo.main({argv}) returned {status}')
            return count / seconds

        def argv_of(b: int, *extra: str) -> list[str]:
            return _demo_argv(s, flags, config_file=config_file, folder=folder, batch=b, checkpoint=checkpoint,
                              output=tmp / f'out_{b}') + list(extra)

        rates = {b: timed(argv_of(b)) for b in (small, large)}
        note = f'{count} images ({s.demo_copies} copies of {len(samples)}), includes model loading'
        report.add(keys[0][0], keys[0][1], rates[small], 'img/s', note=note)
        report.add(keys[1][0], keys[1][1], rates[large], 'img/s')
        report.add(keys[2][0], keys[2][1], rates[large] / rates[small], 'x', ('>=', 3))
        ort_reason = ('skipped: demo.py has no --backend' if '--backend' not in flags else
                      'skipped: ONNX Runtime runs on the CPU' if s.device.type != 'cpu' else
                      'skipped: onnxruntime is not installed' if importlib.util.find_spec('onnxruntime') is None
                      else '')
        ort_rates: dict[int, float | None] = {small: None, large: None}
        if not ort_reason:
            timed(argv_of(large, '--backend', 'onnxruntime'))  # exports and caches the graph, untimed
            ort_rates = {b: timed(argv_of(b, '--backend', 'onnxruntime')) for b in (small, large)}
        report.add('demo.ort.b1.img_s', f'demo --backend onnxruntime batch {small}', ort_rates[small], 'img/s',
                   note=ort_reason or 'cached graph; includes model loading and the cache check')
        report.add('demo.ort.b64.img_s', f'demo --backend onnxruntime batch {large}', ort_rates[large], 'img/s',
                   note=ort_reason)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _yaml_of(config: Config) -> str:
    """A config file holding the model keys of `config` (nested YAML from joined keys of the template)."""
    import yaml

    template = yaml.safe_load((REPO_ROOT / 'configs' / 'template.yaml').read_text(encoding='utf-8'))
    tree: dict[str, Any] = {}

    def place(node: dict[str, Any], tmpl: dict[str, Any], prefix: str) -> None:
        for key, value in tmpl.items():
            joined = f'{prefix}_{key}' if prefix else key
            if isinstance(value, dict):
                child: dict[str, Any] = {}
                place(child, value, joined)
                if child:
                    node[key] = child
            elif joined.startswith(MODEL_KEY_PREFIXES + ('model_name',)) and joined in config:
                node[key] = getattr(config, joined)
    place(tree, template, '')
    return yaml.safe_dump(tree, sort_keys=False)


# ----------------------------------------------------------------------------------------------- fastai Learner


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
            _sync(self.device)
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


def section_render(s: Settings, report: Report, train: dict[str, TrainResult] | None = None) -> None:
    """7. Synthetic renders per second on one core (plain and scene style, PNG encoding included) against the
    images per second the quarter-width ABINet-Vision step consumes: whether data can be rendered on the fly."""
    import cv2
    import matplotlib

    from tools.render_synthetic import find_fonts, render_word
    from tools.synth.corpus import Corpus, common_words
    from tools.synth.scene import SceneRenderer
    from tools.synth.textures import load_textures, texture_files

    if s.quick:  # seconds: one font, one made-up texture, a few words
        fonts = [os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'fonts', 'ttf', 'DejaVuSans.ttf')]
        textures = [np.random.default_rng(0).integers(0, 256, (64, 256, 3), dtype=np.uint8)]
        corpus, count = Corpus(['street', 'open', 'exit']), 20
    else:
        fonts = find_fonts(['data/render_assets/fonts'])
        textures, corpus, count = load_textures(texture_files()), Corpus(common_words()), 400
    scene = SceneRenderer(textures=textures)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core's rate: OpenCV would otherwise spread a resize over every core
    rates = {}
    try:
        for style in ('plain', 'scene'):
            rng = np.random.default_rng(0)
            start = time.perf_counter()
            for _ in range(count):
                text, font = corpus.sample(rng), fonts[rng.integers(len(fonts))]
                img = scene.render(text, font, rng) if style == 'scene' else render_word(text, font, rng)
                cv2.imencode('.png', img)
            rates[style] = count / (time.perf_counter() - start)
            report.add(f'render.{style}.img_s', f'{style} renders on one core', rates[style], 'img/s',
                       note=f'{count} renders, {len(fonts)} fonts, {len(scene.textures)} textures, PNG encoded')
    finally:
        cv2.setNumThreads(threads)
    step = (train or {}).get('amp_off')
    if step is not None:
        consumed = step.batch / step.step_s['abinet']
        report.add('render.scene.core_share', 'share of one core to render on the fly', consumed / rates['scene'],
                   'cores', note=f'ABINet-Vision consumes {consumed:.0f} img/s ({s.config_path or s.size}); '
                                 'rendered ahead, each image is drawn once for every epoch it serves')


# ----------------------------------------------------------------------------------------------- onnx


ORT_TARGETS = {1: 2.0, 32: 1.5}  # issue 37: ONNX Runtime float32, full size, over official ABINet eager, by batch
PROFILE_TOP = 5  # operator types listed by the profile; the rest are summed as 'other'
SIZE_LABELS = {'tiny': 'tiny', 'quarter': 'quarter width', 'official': 'full size'}


def ort_forward(session: Any, images: torch.Tensor) -> Callable[[], Any]:
    """One ONNX Runtime call on a fixed batch (the backend's own array conversion included)."""
    from support.onnx_backend import OrtVision

    model = OrtVision(session)
    return lambda: model(images)


def default_ort_session(path: Path, threads: int) -> Any:
    """A session with onnxruntime's default options except the thread count (what the backend's options buy)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])


def extended_ort_session(path: Path, threads: int) -> Any:
    """The backend's session options with graph optimisation ORT_ENABLE_EXTENDED: every fusion, but not the
    NCHWc layout transformation of ORT_ENABLE_ALL (which adds ReorderInput / ReorderOutput nodes)."""
    import onnxruntime

    from support.onnx_backend import session_options

    options = session_options(threads)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])


def ort_profile_shares(path: Path, images: torch.Tensor, threads: int, calls: int, folder: Path) -> dict[str, float]:
    """Share (%) of ONNX Runtime's kernel time per operator type over `calls` runs of the graph at `path`."""
    import onnxruntime

    from support.onnx_backend import OrtVision, session_options

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / 'ort_profile')
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])
    model = OrtVision(session)
    for _ in range(calls):
        model(images)
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get('cat') == 'Node' and str(event.get('name', '')).endswith('_kernel_time'):
            op = event.get('args', {}).get('op_name', '?')
            totals[op] = totals.get(op, 0.0) + float(event.get('dur', 0))
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    shares = {op: 100 * t / whole for op, t in ranked[:PROFILE_TOP]}
    if len(ranked) > PROFILE_TOP:
        shares['other'] = 100 * sum(t for _, t in ranked[PROFILE_TOP:]) / whole
    return shares


def official_eager(s: Settings, model: nn.Module, config: Config) -> nn.Module | None:
    """Official ABINet-Vision with `model`'s weights (logits checked equal), or None without --official."""
    if s.official_root is None:
        return None
    if s.official_size != 'official':
        raise BenchmarkError('--official: official ABINet-Vision is full size; leave out --quick')
    from tools.official_abinet import load_official  # imports this module: loaded here, not at the top

    official, _ = load_official(s.official_root, config.dataset_charset_path)
    official.load_state_dict(model.state_dict())
    probe = torch.randn(2, 3, config.dataset_image_height, config.dataset_image_width)
    with torch.no_grad():
        torch.testing.assert_close(official.eval()(probe)['logits'], model(probe)['logits'], rtol=1e-4, atol=1e-4)
    return official


def section_onnx(s: Settings, report: Report) -> None:
    """6. Images/s of the vision model in PyTorch eager, ONNX Runtime float32 (the backend's session options and
    onnxruntime's defaults) and int8, per model size and batch, timed in alternation; official ABINet eager at
    full size with --official."""
    if s.device.type != 'cpu':
        report.add('onnx.skipped', 'onnx section', None, note='skipped: ONNX Runtime runs on the CPU (--device cpu)')
        return
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        report.add('onnx.skipped', 'onnx section', None, note='skipped: onnxruntime is not installed')
        return
    from support.onnx_backend import create_session, quantize_int8
    from support.onnx_export import export_onnx

    threads = torch.get_num_threads()
    for size in s.onnx_sizes:
        shown = SIZE_LABELS[size]
        config = model_config(ABINET, size)
        torch.manual_seed(0)
        model = build_model(config).eval()
        image_size = (config.dataset_image_height, config.dataset_image_width)
        official = official_eager(s, model, config) if size == s.official_size else None
        with tempfile.TemporaryDirectory(prefix='benchmark_onnx_') as tmp:
            f32 = export_onnx(model, Path(tmp) / 'f32.onnx', image_size)
            int8 = quantize_int8(f32, Path(tmp) / 'int8.onnx')
            sessions = {'ort': create_session(f32, threads), 'ort_default': default_ort_session(f32, threads),
                        'ort_extended': extended_ort_session(f32, threads), 'ort_int8': create_session(int8, threads)}
            probe = torch.randn(3, 3, *image_size, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                ref = model(probe)['logits']
            diff = float((ort_forward(sessions['ort'], probe)()['logits'] - ref).abs().max())
            report.add(f'onnx.{size}.logits_rel_diff', f'{shown}: ORT float32 logits vs PyTorch',
                       diff / max(float(ref.abs().max()), 1e-12), 'rel', ('<=', 1e-4),
                       note=f'largest abs difference / largest abs logit; {threads} threads for both')
            for b in s.onnx_batches:
                images = torch.randn(b, 3, *image_size)
                fns = {'torch': forward_only_fn(model, images),
                       **{name: ort_forward(session, images) for name, session in sessions.items()}}
                if official is not None:
                    fns['abinet'] = forward_only_fn(official, images)
                repeats = s.infer_repeats if b == 1 else max(2, s.steps)
                times = interleaved_medians(fns, repeats, 1, s.device)
                rate = {name: b / t for name, t in times.items()}
                labels = {'torch': 'PyTorch eager', 'ort': 'ORT float32', 'ort_default': 'ORT float32, default options',
                          'ort_extended': 'ORT float32, no NCHWc layout (ENABLE_EXTENDED)',
                          'ort_int8': 'ORT int8 (dynamic)', 'abinet': 'official ABINet eager'}
                for name in fns:
                    report.add(f'onnx.{size}.b{b}.{name}.img_s', f'{shown} batch {b}: {labels[name]}', rate[name],
                               'img/s', note='eval mode; alternating, medians' if name == 'torch' else '')
                report.add(f'onnx.{size}.b{b}.ort_vs_torch', f'{shown} batch {b}: ORT float32 / PyTorch',
                           rate['ort'] / rate['torch'], 'x')
                if official is not None:
                    target = ORT_TARGETS.get(b)
                    report.add(f'onnx.{size}.b{b}.ort_vs_abinet', f'{shown} batch {b}: ORT float32 / official ABINet',
                               rate['ort'] / rate['abinet'], 'x', ('>=', target) if target else None)
                if s.onnx_profile and b == max(s.onnx_batches):
                    shares = ort_profile_shares(f32, images, threads, max(2, s.steps), Path(tmp))
                    for op, share in shares.items():
                        report.add(f'onnx.{size}.b{b}.profile.{op}', f'{shown} batch {b}: ORT time in {op}', share,
                                   '%', note='ONNX Runtime profile, kernel time per operator type')


def forward_only_fn(model: nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    """An eval-mode, no-grad forward pass on a fixed batch."""
    def run() -> Any:
        with torch.no_grad():
            return model(images)
    return run


# ----------------------------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', choices=SIZES, default=None, help='model size preset (default quarter; tiny with --quick)')
    p.add_argument('--config', default=None, help='take the model-size keys from this config instead of --size')
    p.add_argument('--batch', type=int, default=None, help='training batch (default 32; 2 with --quick)')
    p.add_argument('--steps', type=int, default=None, help='timed steps k (median reported; default 5)')
    p.add_argument('--warmup', type=int, default=None, help='untimed warm-up steps (default 2)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: all usable cores)')
    p.add_argument('--device', default='auto', help='cpu | cuda | cuda:N | auto')
    p.add_argument('--amp', nargs='*', default=None, choices=('amp_off', 'bf16', 'fp16'),
                   help='precisions for training and inference (default amp_off, plus bf16 and fp16 on CUDA)')
    p.add_argument('--cpu_bf16', action='store_true', help='on CPU, add bf16 autocast to the precisions')
    p.add_argument('--conaug_batch', type=int, default=None, help='ConAug batch (default 384)')
    p.add_argument('--clr_n', type=int, default=None, help='contrastive loss batch N (default 384)')
    p.add_argument('--clr_loop_n', type=int, default=None, help='samples the loop reference is timed on (default 32)')
    p.add_argument('--lmdb', default=None, help=f'LMDB for the input pipeline (default {REAL_LMDB})')
    p.add_argument('--loader_samples', type=int, default=None, help='samples read per loader setting (default 300)')
    p.add_argument('--official_probe_batch', type=int, default=None,
                   help='batch at which the official-size step is measured, then scaled to 384 (default 4 on CPU, '
                        '96 on CUDA)')
    p.add_argument('--official_step', action='store_true', help='measure the official step at batch 384 itself')
    p.add_argument('--demo_copies', type=int, default=None, help='copies of the 8 demo images (default 16)')
    p.add_argument('--sections', nargs='*', default=None,
                   choices=SECTIONS, help='run only these sections')
    p.add_argument('--fit_batch', action='store_true',
                   help='on CUDA, halve the training batch of a precision until it fits in memory (else its rows '
                        'are skipped)')
    p.add_argument('--fit_memory', action='store_true',
                   help='lower the training batch beforehand to the largest that the memory estimate '
                        '(support/memory_estimate.py) says fits the free memory (no out-of-memory retries)')
    p.add_argument('--channels_last', action='store_true',
                   help='store the models channels-last on CUDA, as training.channels_last does')
    p.add_argument('--cudnn_benchmark', action='store_true', help='torch.backends.cudnn.benchmark = True')
    p.add_argument('--infer_batch', type=int, default=None, help='the large evaluation batch (default 64)')
    p.add_argument('--loss_steps', type=int, default=None,
                   help='steps of the per-precision final-loss comparison (default 10; 2 with --quick)')
    p.add_argument('--loss_batch', type=int, default=None,
                   help='batch of the final-loss comparison (default 64, at most --batch)')
    p.add_argument('--learner_rounds', type=int, default=None,
                   help='alternating rounds of the learner section, each --steps steps of both paths (default 3; '
                        '1 with --quick)')
    p.add_argument('--onnx_sizes', nargs='+', choices=SIZES, default=None,
                   help='model sizes of the onnx section (default quarter official; tiny with --quick)')
    p.add_argument('--onnx_batches', nargs='+', type=int, default=None,
                   help='batches of the onnx section (default 1 32; 1 4 with --quick)')
    p.add_argument('--official', default=None, help='a checkout of FangShancheng/ABINet: the onnx section times '
                   'official ABINet-Vision eager beside ONNX Runtime at full size (tools/official_abinet.py loads it)')
    p.add_argument('--onnx_profile', action='store_true',
                   help="onnx section: ONNX Runtime's own profile of the float32 graph, each operator type's share")
    p.add_argument('--no_malloc_tune', action='store_true',
                   help="keep glibc's default malloc (by default the benchmark tunes it as main.py does with "
                        'global.malloc_tune; --quick never tunes, as it runs inside the test process)')
    p.add_argument('--quick', action='store_true', help='tiny model and sizes: the whole harness in seconds')
    p.add_argument('--output', default=None, help='write the table as JSON here')
    return p.parse_args(argv)


class BenchmarkError(ValueError):
    """A command-line value the benchmark cannot use (reported as one `error:` line, exit status 2)."""


def resolve_device(name: str) -> torch.device:
    """--device as a torch.device: `auto` takes CUDA when available; `cuda:N` must name a visible GPU."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchmarkError(f'--device {name!r}: expected cpu, cuda, cuda:N or auto') from None
    if device.type not in ('cpu', 'cuda'):
        raise BenchmarkError(f'--device {name!r}: expected cpu, cuda, cuda:N or auto')
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BenchmarkError(f'--device {name}: no CUDA device is available (use --device cpu)')
        if (device.index or 0) >= count:
            raise BenchmarkError(f'--device {name}: only {count} CUDA device(s) visible, cuda:0 to cuda:{count - 1}')
    return device


def settings_from(args: argparse.Namespace) -> Settings:
    """Resolve defaults (quick or full) and the device."""
    device = resolve_device(args.device)
    q = args.quick

    def pick(value: Any, quick: Any, full: Any) -> Any:
        return value if value is not None else (quick if q else full)

    if args.amp is not None:
        precisions = list(dict.fromkeys(['amp_off', *args.amp]))
    elif device.type == 'cuda':
        precisions = ['amp_off', 'bf16', 'fp16']
    else:
        precisions = ['amp_off'] + (['bf16'] if args.cpu_bf16 else [])
    probe = OFFICIAL_BATCH if args.official_step else pick(args.official_probe_batch, 1,
                                                           96 if device.type == 'cuda' else 4)
    return Settings(
        device=device, size=pick(args.size, 'tiny', 'quarter'), config_path=args.config,
        batch=pick(args.batch, 2, 32), steps=pick(args.steps, 1, 5), warmup=pick(args.warmup, 1, 2),
        precisions=precisions, conaug_batch=pick(args.conaug_batch, 16, 384), clr_n=pick(args.clr_n, 16, 384),
        clr_loop_n=pick(args.clr_loop_n, 4, 32), lmdb=args.lmdb, loader_samples=pick(args.loader_samples, 8, 300),
        official_size='tiny' if q else 'official', official_probe_batch=probe,
        official_steps=1 if q else 2, infer_batches=(1, args.infer_batch or 64), infer_repeats=3 if q else 20,
        demo_copies=pick(args.demo_copies, 1, 16), quick=q, fit_batch=args.fit_batch, fit_memory=args.fit_memory,
        channels_last=args.channels_last, loss_steps=pick(args.loss_steps, 2, 10),
        loss_batch=pick(args.loss_batch, 2, 64), learner_rounds=pick(args.learner_rounds, 1, 3),
        onnx_sizes=tuple(pick(args.onnx_sizes, ['tiny'], ['quarter', 'official'])),
        onnx_batches=tuple(pick(args.onnx_batches, [1, 4], [1, 32])), official_root=args.official,
        onnx_profile=args.onnx_profile)


def run_sections(s: Settings, sections: set[str], report: Report) -> None:
    """The chosen sections in order; the shares of ConAug and the loss are taken of the fastest ConCLR step."""
    train: dict[str, TrainResult] = {}
    if 'train' in sections:
        flops = model_flops(s)
        report_flops(s, report, flops)
        train = section_train(s, report, flops)
    elif sections & {'conaug', 'clr'}:
        train = section_train(replace(s, precisions=['amp_off']), Report(), None)
    ref = StepRef.fastest(train)
    if sections & {'conaug', 'clr'} and ref is None:
        raise RuntimeError(f'no ConCLR training step fitted on {s.device} at batch {s.batch}: nothing to take '
                           'shares of (try --fit_batch or a smaller --batch)')
    if 'conaug' in sections:
        section_conaug(s, report, ref)
    if 'clr' in sections:
        section_contrastive(s, report, ref)
    if {'conaug', 'clr'} <= sections:
        report_share(report, ref)
    if 'losses' in sections:
        section_losses(s, report)
    if 'loader' in sections:
        section_loader(s, report, train)
    if 'infer' in sections:
        section_infer(s, report)
    if 'demo' in sections:
        section_demo(s, report)
    if 'learner' in sections:
        section_learner(s, report)
    if 'onnx' in sections:
        section_onnx(s, report)
    if 'render' in sections:
        section_render(s, report, train)


def run(argv: list[str] | None = None) -> Report:
    """Run the benchmark and return its report (nothing printed)."""
    args = parse_args(argv)
    s = settings_from(args)
    sections = set(args.sections) if args.sections else set(SECTIONS)
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif not s.quick:
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())
    malloc_tuned = tune_malloc() if not (args.no_malloc_tune or s.quick) else False
    if s.device.type == 'cuda':
        torch.cuda.set_device(s.device)
    cudnn_before = torch.backends.cudnn.benchmark
    enable_cudnn_autotune(s.device)  # as main.py trains and evaluates
    batch_note = None
    if s.fit_memory and sections & {'train', 'conaug', 'clr'}:
        batch, batch_note = memory_batch(s)
        s = replace(s, batch=batch)
    report = Report()
    report.meta = {
        'command': 'python -m tools.benchmark ' + ' '.join(argv if argv is not None else sys.argv[1:]),
        'device': str(s.device) + (f' ({torch.cuda.get_device_name(s.device)})' if s.device.type == 'cuda' else ''),
        'torch': torch.__version__, 'threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
        'load_average_start': list(os.getloadavg()), 'size': s.config_path or s.size, 'batch': s.batch,
        'steps': s.steps, 'warmup': s.warmup, 'precisions': s.precisions, 'quick': s.quick,
        'malloc_tuned': malloc_tuned, 'fit_batch': s.fit_batch, 'fit_memory': s.fit_memory, 'batch_note': batch_note,
        'channels_last': s.channels_last,
        'cudnn_benchmark': bool(args.cudnn_benchmark or torch.backends.cudnn.benchmark),
        'infer_batches': list(s.infer_batches),
    }
    started = time.perf_counter()
    cudnn_before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark) or cudnn_before
    try:
        run_sections(s, sections, report)
    finally:
        torch.set_num_threads(threads_before)
        torch.backends.cudnn.benchmark = cudnn_before
    report.meta['load_average_end'] = list(os.getloadavg())
    report.meta['seconds'] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    """Run, print the table and write the JSON (--output); bad input is one `error:` line and status 2."""
    try:
        report = run(argv)
    except BenchmarkError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    args = parse_args(argv)
    m = report.meta
    print(f"device {m['device']}, torch {m['torch']}, {m['threads']} threads, model {m['size']}, batch {m['batch']}, "
          f"malloc {'tuned' if m['malloc_tuned'] else 'glibc default'}, "
          f"load average {m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f}, {m['seconds']} s")
    busy = m['load_average_start'][0]
    if busy > (m['cpu_count'] or 1) - m['threads'] + 0.5:
        print(f"warning: load average {busy:.2f} on {m['cpu_count']} cores with {m['threads']} torch threads: other "
              'processes compete for the cores and timings are noisy (multi-threaded ones most; try --threads 1)')
    print(report.format())
    failed = [r.label for r in report.rows if r.status == 'FAIL']
    print(f'targets: {sum(r.status == "PASS" for r in report.rows)} PASS, {len(failed)} FAIL, '
          f'{sum(r.status == "SKIP" for r in report.rows)} SKIP')
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report.to_json(), indent=2), encoding='utf-8')
        print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
