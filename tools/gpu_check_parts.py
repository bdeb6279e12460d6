"""The parts of tools/gpu_check.py that run project code, one child process each: setup, train, study.

    python -m tools.gpu_check_parts setup --dir OUT --work TMP [--wheelhouse DIR --venv .venv]
    python -m tools.gpu_check_parts train --dir OUT --work TMP --steps 300
    python -m tools.gpu_check_parts study --dir OUT --work TMP --seconds 120

Each writes OUT/result.json ({'ok', 'detail', 'facts'}) for the driver's summary; `--dry-run` gives the CPU's
tiny sizes. The setup part imports nothing beyond the standard library, so it can report (and, with --wheelhouse,
mend) a machine on which the project does not import yet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Modules the project imports (tools and tests included): a machine with only a CUDA torch lacks most of them.
REQUIRED_MODULES = ('torch', 'numpy', 'fastai', 'fastprogress', 'pkg_resources', 'lmdb', 'tensorboardX',
                    'editdistance', 'english_words', 'cv2', 'yaml', 'PIL', 'matplotlib', 'sklearn', 'tensorboard',
                    'pytest')
PROBE = """
import importlib, json, sys
missing = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:
        missing[name] = f'{type(e).__name__}: {e}'[:200]
facts = {}
try:
    import torch
    facts.update(python=sys.version.split()[0], torch=torch.__version__, cuda_runtime=torch.version.cuda,
                 cuda_available=torch.cuda.is_available(), cudnn=torch.backends.cudnn.version())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, capability=f'{p.major}.{p.minor}', gpu_memory_gib=round(p.total_memory / 2**30, 1),
                     multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
except Exception as e:
    facts['torch_error'] = f'{type(e).__name__}: {e}'[:200]
try:
    import runtime.fastai_compat, main  # the whole project import chain (fastai, pkg_resources.require, ...)
    project = None
except Exception as e:
    project = f'{type(e).__name__}: {e}'[:300]
print(json.dumps({'missing': missing, 'project': project, 'facts': facts}))
"""
TINY_VISION = {'d_model': 16, 'nhead': 2, 'd_inner': 32, 'backbone_ln': 1, 'resnet_widths': [4, 8, 8, 16, 16],
               'resnet_layers': [1, 1, 1, 1, 1], 'attention_channels': 8}
LOSS_LINE = re.compile(r'iter (\d+): loss = ([-+0-9.eE]+|nan|inf)')
SPEED = re.compile(r'([0-9.]+) img/s, data ([0-9.]+) s / compute ([0-9.]+) s')
CWR = re.compile(r'iter (\d+): eval .*cwr = ([0-9.]+)')


def write_result(folder: Path, ok: bool, detail: str, **facts: Any) -> None:
    """OUT/result.json for the driver."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'result.json').write_text(json.dumps({'ok': ok, 'detail': detail, 'facts': facts}, indent=2))


# ----------------------------------------------------------------------------------------------- setup


def probe(python: str) -> dict[str, Any]:
    """Which required modules `python` imports, whether the project imports, and what torch sees there."""
    done = subprocess.run([python, '-c', PROBE, *REQUIRED_MODULES], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        return {'missing': {}, 'project': f'the probe itself failed: {done.stderr.strip()[-300:]}', 'facts': {}}
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_command(cmd: list[str], path: Path) -> None:
    """A command's output into a file (nvidia-smi, pip list); a missing command leaves a note."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        path.write_text(done.stdout + done.stderr)
    except (OSError, subprocess.TimeoutExpired) as e:
        path.write_text(f'{" ".join(cmd)}: {e}\n')


def part_setup(args: argparse.Namespace) -> bool:
    """Record the environment; with --wheelhouse, install what is missing into --venv; check that the project
    imports (in the venv when it was installed into)."""
    from tools import wheelhouse

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    save_command(['nvidia-smi'], out / 'nvidia-smi.txt')
    save_command([sys.executable, '-m', 'pip', 'list', '--disable-pip-version-check'], out / 'pip-list.txt')
    before = probe(sys.executable)
    facts: dict[str, Any] = {**before['facts'], 'cpu_count': os.cpu_count(), 'executable': sys.executable}
    needed = sorted(before['missing']) or (['(project import)'] if before['project'] else [])
    python, problems = sys.executable, []
    if needed:
        facts['missing_before'] = ', '.join(needed)
        if args.wheelhouse:
            try:
                python = str(wheelhouse.ensure_venv(Path(args.venv), sys.executable))
                wheelhouse.install(python, Path(args.wheelhouse), Path(args.work), log=out / 'install.log')
                facts['installed_into'] = python
            except (wheelhouse.WheelhouseError, subprocess.CalledProcessError, OSError) as e:
                problems.append(str(e))
        else:
            facts['installed'] = 'nothing: no --wheelhouse'
    after = probe(python) if needed and not problems else before
    problems += [f'{k} ({v})' for k, v in after['missing'].items()]
    if after['project']:
        problems.append(f'the project does not import: {after["project"]}')
    if not args.dry_run and not after['facts'].get('cuda_available'):
        problems.append('torch sees no CUDA device')
    detail = ('; '.join(problems) if problems else
              f'{facts.get("gpu", "no GPU")}, torch {facts.get("torch")}, CUDA {facts.get("cuda_runtime")}, '
              f'Python {facts.get("python")}' + (f'; installed from {args.wheelhouse} into {python}'
                                                 if 'installed_into' in facts else '; nothing to install'))
    write_result(out, not problems, detail, **facts)
    return not problems


# ----------------------------------------------------------------------------------------------- train


def render(folder: Path, num_train: int, num_test: int, workers: int) -> None:
    """Synthetic train / test LMDBs (tools/render_synthetic.py)."""
    status = subprocess.run([sys.executable, '-m', 'tools.render_synthetic', '--output', str(folder), '--num_train',
                             str(num_train), '--num_test', str(num_test), '--workers', str(workers),
                             '--vocab_size', '3000', '--seed', '0'], cwd=REPO_ROOT).returncode
    if status:
        raise RuntimeError(f'render_synthetic exited with {status}')


def train_config(path: Path, data: Path, workdir: Path, steps: int, dry_run: bool) -> Path:
    """ABINet-Vision at full size (template defaults), bf16, channels-last, pinned memory, batch 384; the tiny
    model at batch 8 for the dry run."""
    import yaml

    workers = 1 if dry_run else max(1, min(14, (os.cpu_count() or 2) - 2))
    batch = 8 if dry_run else 384
    config = {
        'global': {'name': 'gpu_train', 'workdir': str(workdir), 'seed': 0},
        'dataset': {'train': {'roots': [str(data / 'train')], 'batch_size': batch},
                    'test': {'roots': [str(data / 'test')], 'batch_size': batch},
                    'num_workers': workers, 'data_aug': True, 'pin_memory': True},
        'training': {'epochs': 1000, 'max_iters': steps, 'show_iters': 2 if dry_run else 10,
                     'eval_iters': max(1, steps // 2), 'save_iters': steps, 'amp': 'bf16', 'channels_last': True},
        'optimizer': {'scheduler': {'periods': [1000]}},
        'model': {'name': 'modules.model_vision.BaseVision', **({'vision': TINY_VISION} if dry_run else {})}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_train_log(text: str) -> dict[str, Any]:
    """Loss points, speed and evaluations from a train.txt."""
    points = [(int(m.group(1)), float(m.group(2))) for m in map(LOSS_LINE.search, text.splitlines()) if m]
    speeds = [tuple(map(float, m.groups())) for m in map(SPEED.search, text.splitlines()) if m]
    cwr = [(int(m.group(1)), float(m.group(2))) for m in map(CWR.search, text.splitlines()) if m]
    return {'points': points, 'speeds': speeds, 'cwr': cwr}


def plot_loss(points: list[tuple[int, float]], path: Path, title: str) -> None:
    """The training loss against the iteration, as a PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker='.')
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss (window mean)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def part_train(args: argparse.Namespace) -> bool:
    """Render data, train with main.py for --steps steps, keep the log and plot the loss curve."""
    out, work = Path(args.dir), Path(args.work)
    data, runs = work / 'data', work / 'runs'
    renders = (48, 16) if args.dry_run else (4000, 384)  # a few seconds of rendering on a GPU node's cores
    render(data, *renders, workers=1 if args.dry_run else max(1, (os.cpu_count() or 2) - 2))
    config = train_config(out / 'config.yaml', data, runs, args.steps, args.dry_run)
    status = subprocess.run([sys.executable, 'main.py', '--config', str(config)], cwd=REPO_ROOT).returncode
    run_dir = runs / 'gpu_train'
    for pattern in ('train.txt', 'events.out.tfevents.*'):
        for path in run_dir.glob(pattern):
            shutil.copy(path, out / path.name)
    log = read_train_log((run_dir / 'train.txt').read_text() if (run_dir / 'train.txt').is_file() else '')
    points = log['points']
    if points:
        size = 'tiny model, CPU dry run' if args.dry_run else 'ABINet-Vision full size, batch 384'
        plot_loss(points, out / 'loss_curve.png', f'{size}, bf16, {renders[0]} rendered images')
        (out / 'loss_curve.tsv').write_text('iteration\tloss\n' + ''.join(f'{i}\t{v}\n' for i, v in points))
    speeds = [s[0] for s in log['speeds'][1:]] or [s[0] for s in log['speeds']]  # the first window warms up
    facts = {'steps': points[-1][0] if points else 0, 'first_loss': points[0][1] if points else None,
             'last_loss': points[-1][1] if points else None,
             'img_s_median': sorted(speeds)[len(speeds) // 2] if speeds else None,
             'data_s': sum(s[1] for s in log['speeds']), 'compute_s': sum(s[2] for s in log['speeds']),
             'cwr_last': log['cwr'][-1][1] if log['cwr'] else None, 'rendered': renders[0]}
    ok = status == 0 and len(points) >= 2 and facts['last_loss'] == facts['last_loss']  # NaN != NaN
    detail = (f'{facts["steps"]} steps, loss {facts["first_loss"]:.3f} -> {facts["last_loss"]:.3f}, '
              f'{facts["img_s_median"] or 0:.0f} img/s (median window), data {facts["data_s"]:.1f} s / compute '
              f'{facts["compute_s"]:.1f} s' if points else f'main.py exited with {status} and logged no loss')
    write_result(out, ok, detail, **facts)
    return ok


# ----------------------------------------------------------------------------------------------- study


STUDY_STARTUP_S = 35  # rendering 3,000 words, three runs' start-up and evaluations, t-SNE of 100 images


def study_iters(seconds: float) -> int:
    """Steps per run that fit in `seconds`: ~0.3 s for the three runs' steps together (ABINet, ConCLR, ABINet at
    ConCLR's wall clock; the preset's unmeasured estimate for the half-width model at batch 256, with a margin)
    after STUDY_STARTUP_S of rendering, start-up, evaluations and t-SNE (unmeasured on a GPU: an estimate)."""
    return int(max(10, min(450, (seconds - STUDY_STARTUP_S) / 0.3)))


def cut_preset(path: Path, dry_run: bool, seconds: float) -> tuple[Path, int]:
    """experiments/oov_study/configs/gpu.yaml (tiny.yaml for the dry run) cut to one seed and fewer renders;
    (the cut preset written to `path`, steps per run)."""
    import yaml

    source = REPO_ROOT / 'experiments' / 'oov_study' / 'configs' / ('tiny.yaml' if dry_run else 'gpu.yaml')
    preset = yaml.safe_load(source.read_text())
    experiment = preset['experiment']
    # no sweep, one seed, the baseline and the reference arm only: three runs (the two, and the equal wall-clock one)
    experiment.update(vocab_size=20 if dry_run else 300, sweep_vocab_sizes=[], curve_points=2, benchmarks=False,
                      wall_clock_seeds=[0])
    preset['arms'] = {name: dict(preset['arms'][name], seeds=[0])
                      for name in (experiment.get('baseline', 'abinet'), experiment.get('reference', 'conclr'))}
    if dry_run:
        experiment.update(tsne_images=0)  # scikit-learn's t-SNE is the dry run's slowest step
    else:
        experiment.update(train_images=3000, test_images=300, tsne_images=100,
                          render_workers=max(1, (os.cpu_count() or 2) - 2))
    steps = 4 if dry_run else study_iters(seconds)
    preset['config']['training']['max_iters'] = steps
    preset['config']['training']['show_iters'] = 2 if dry_run else 10
    path.write_text(f'# {source.name}, cut by tools/gpu_check_parts.py to fit its time\n'
                    + yaml.safe_dump(preset, sort_keys=False))
    return path, steps


def part_study(args: argparse.Namespace) -> bool:
    """The out-of-vocabulary study (experiments/oov_study) on the cut preset; the report, curves and logs
    are kept, the data is not."""
    out, work = Path(args.dir), Path(args.work)
    preset, steps = cut_preset(out / 'preset.yaml', args.dry_run, args.seconds)
    status = subprocess.run([sys.executable, '-m', 'experiments.oov_study', '--preset', str(preset),
                             '--output', str(work / 'study')], cwd=REPO_ROOT).returncode
    for path in (work / 'study').rglob('*'):
        relative = path.relative_to(work / 'study')
        if path.is_file() and path.suffix in ('.md', '.json', '.png', '.txt', '.yaml') and 'data' not in relative.parts:
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, out / relative)
    ok = status == 0 and (out / 'results.md').is_file()
    write_result(out, ok, f'{steps} steps per run, one seed; results.md' if ok else
                 f'experiments.oov_study exited with {status}', steps=steps)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('part', choices=('setup', 'train', 'study'))
    p.add_argument('--dir', required=True, help='where the part writes its outputs and result.json')
    p.add_argument('--work', required=True, help='scratch folder (data, runs); the driver deletes it')
    p.add_argument('--dry-run', action='store_true', help='tiny sizes on the CPU')
    p.add_argument('--wheelhouse', default=None, help='setup: install the requirements from this pip download '
                   'folder (no index) when something is missing')
    p.add_argument('--venv', default=str(REPO_ROOT / '.venv'), help='setup: the venv the wheelhouse installs into')
    p.add_argument('--steps', type=int, default=300, help='train: optimiser steps')
    p.add_argument('--seconds', type=float, default=150, help='study: the time it may take')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one part; exit status 0 when it succeeded."""
    args = parse_args(argv)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.part == 'setup':
        return 0 if part_setup(args) else 1
    import runtime.fastai_compat  # noqa: F401  (before fastai)

    return 0 if {'train': part_train, 'study': part_study}[args.part](args) else 1


if __name__ == '__main__':
    sys.exit(main())
