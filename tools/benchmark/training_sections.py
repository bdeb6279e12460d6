"""Sections that time training: the step of ABINet-Vision and ConCLR-Vision, FLOPs, ConAug, the contrastive
loss, final losses across precisions, the input pipeline and the scene renderer."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (must come before fastai)

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from callbacks.conaug import ConAugPretransform, draw_conaug_params
from losses.contrastive import contrastive_loss
from tools.benchmark.batches import ABINET, CONCLR, make_batch, make_train_step, model_config
from tools.benchmark.checks import conaug_check, contrastive_check, contrastive_inputs
from tools.benchmark.loop_references import conaug_loop, contrastive_loss_loop
from tools.benchmark.report import Report
from tools.benchmark.settings import OFFICIAL_BATCH, REAL_LMDB, Settings
from tools.benchmark.timing import free_device_memory, interleaved_medians, median_time
from tools.synth.fonts import find_fonts
from tools.synth.plain import render_word
from tools.synth.splits import render_split
from tools.synth.vocabulary import make_vocabulary
from training.builders import build_model, is_conclr
from utils import CharsetMapper

GPU_TARGET_IMG_S = 2500  # target: ABINet-Vision full-size bf16 training on one H100
RATIO_TARGET = {'cpu': 3.15, 'cuda': 3.1}  # ConCLR / ABINet step time (targets on the CPU and on a GPU)
LOSS_AGREEMENT = 0.02  # target: bf16 / fp16 final losses within 2 % of float32 after the same steps
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (twice the forward: input and weight gradients)
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s, by a part of the device name.
BF16_PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.4), ('GH200', 989.4),
                    ('H200 NVL', 835.0), ('H200', 989.4), ('A100', 312.0))


@dataclass
class TrainResult:
    """Median step times of one precision's training line-up, at the batch that ran."""

    batch: int
    step_s: dict[str, float]  # 'abinet', 'conclr', 'abinet3n'


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
    from training.memory_estimate import RESERVE

    abinet, conclr = estimates['abinet'], estimates['conclr']
    activations = max(conclr.with_batch(batch).activation_bytes, abinet.with_batch(3 * batch).activation_bytes)
    return 2 * abinet.state_bytes + conclr.state_bytes + activations + RESERVE


def memory_batch(s: Settings, free: float | None = None) -> tuple[int, str]:
    """The largest batch <= s.batch (a multiple of 8 when 8 or more) whose training line-up fits the device's
    free memory by training/memory_estimate.py, measured in float32 (the costliest precision; every precision then
    runs at the same batch); (batch, a note that says why)."""
    from training.memory_estimate import GIB, free_memory, measure

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
                   'img/s', target, note='target: full size, bf16, one H100' if target else
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
    """ConAug and the contrastive loss together, as a share of the ConCLR step (target: < 2 %)."""
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
    float32 (target: bf16 and fp16 within 2 %). Needs more than one precision."""
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
    tmp = tempfile.mkdtemp(prefix='benchmark_lmdb_')
    try:
        vocab = make_vocabulary(200, 3, 12, np.random.default_rng(0))
        render_split(os.path.join(tmp, 'train'), samples, seed=0, split_id=0, vocab=vocab, fonts=find_fonts())
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


def section_render(s: Settings, report: Report, train: dict[str, TrainResult] | None = None) -> None:
    """7. Synthetic renders per second on one core (plain and scene style, PNG encoding included) against the
    images per second the quarter-width ABINet-Vision step consumes: whether data can be rendered on the fly."""
    import cv2
    import matplotlib

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
