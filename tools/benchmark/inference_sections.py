"""Sections that time inference: the forward pass, demo.py end to end, ONNX Runtime against PyTorch."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (must come before fastai)

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from configuration import REPO_ROOT, Config
from tools.benchmark.batches import ABINET, MODEL_KEY_PREFIXES, model_config
from tools.benchmark.official import load_official
from tools.benchmark.report import Report
from tools.benchmark.settings import DEMO_SAMPLES, BenchmarkError, Settings
from tools.benchmark.timing import autocast, interleaved_medians
from training.builders import build_model


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

    from runtime.checkpoint import save_checkpoint

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


ORT_TARGETS = {1: 2.0, 32: 1.5}  # ONNX Runtime float32, full size, over official ABINet eager, by batch
PROFILE_TOP = 5  # operator types listed by the profile; the rest are summed as 'other'
SIZE_LABELS = {'tiny': 'tiny', 'quarter': 'quarter width', 'official': 'full size'}


def ort_forward(session: Any, images: torch.Tensor) -> Callable[[], Any]:
    """One ONNX Runtime call on a fixed batch (the backend's own array conversion included)."""
    from inference.onnx_backend import OrtVision

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

    from inference.onnx_backend import session_options

    options = session_options(threads)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])


def ort_profile_shares(path: Path, images: torch.Tensor, threads: int, calls: int, folder: Path) -> dict[str, float]:
    """Share (%) of ONNX Runtime's kernel time per operator type over `calls` runs of the graph at `path`."""
    import onnxruntime

    from inference.onnx_backend import OrtVision, session_options

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
    from inference.onnx_backend import create_session, quantize_int8
    from inference.onnx_export import export_onnx

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
