"""Command line of the benchmark: flags to Settings, which sections run, the table printed and saved."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (must come before fastai)

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from modules.memory_format import enable_cudnn_autotune
from tools.benchmark.batches import SIZES
from tools.benchmark.inference_sections import section_demo, section_infer, section_onnx
from tools.benchmark.learner import section_learner
from tools.benchmark.report import Report
from tools.benchmark.settings import OFFICIAL_BATCH, REAL_LMDB, BenchmarkError, Settings, resolve_device
from tools.benchmark.training_sections import (
    StepRef,
    TrainResult,
    memory_batch,
    model_flops,
    report_flops,
    report_share,
    section_conaug,
    section_contrastive,
    section_loader,
    section_losses,
    section_render,
    section_train,
)
from utils import tune_malloc

SECTIONS = ('train', 'conaug', 'clr', 'losses', 'loader', 'infer', 'demo', 'learner', 'onnx', 'render')


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
                        '(training/memory_estimate.py) says fits the free memory (no out-of-memory retries)')
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
                   'official ABINet-Vision eager beside ONNX Runtime at full size (official.py loads it)')
    p.add_argument('--onnx_profile', action='store_true',
                   help="onnx section: ONNX Runtime's own profile of the float32 graph, each operator type's share")
    p.add_argument('--no_malloc_tune', action='store_true',
                   help="keep glibc's default malloc (by default the benchmark tunes it as main.py does with "
                        'global.malloc_tune; --quick never tunes, as it runs inside the test process)')
    p.add_argument('--quick', action='store_true', help='tiny model and sizes: the whole harness in seconds')
    p.add_argument('--output', default=None, help='write the table as JSON here')
    return p.parse_args(argv)


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
