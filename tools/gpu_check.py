"""GPU readiness check: every part of the GPU path in one command, each part with its own time limit.

    bash tools/gpu_check.sh                       # one NVIDIA GPU: at most 6 minutes, installation included
    bash tools/gpu_check.sh --wheelhouse DIR      # offline: first install what is missing from a pip download folder
    bash tools/gpu_check.sh --dry-run             # the same code path on the CPU with tiny sizes (the test suite)

Parts, in order: setup (environment; with --wheelhouse, installs what is missing, tools/wheelhouse.py),
cuda_tests (pytest -m cuda), benchmark (tools.benchmark's GPU rows at full size, at the largest batch up to 384
that the memory estimate says fits), train (a short full-size bf16 run of main.py on rendered data, with its loss
curve) and study (experiments/oov_study with the gpu preset, cut to the time left; only when time is left).
Everything lands in log/gpu/<card name>/: one folder per part with its output.log, and summary.md (plus
summary.json), rewritten after every part, so it says which part failed or ran out of time and why even when a
later one is cut off. This driver uses the standard library only: the parts run as child processes (killed with
their workers at their limit), so a broken install or a crash in one part cannot take the summary down with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
PARTS_MODULE = 'tools.gpu_check_parts'  # run as `python -m` from the repository root
PARTS = ('setup', 'cuda_tests', 'benchmark', 'train', 'study')
# Seconds: each part's own limit, and the least time left at which an optional part still starts. The whole check
# is 6 minutes on one GPU with nothing retried: BUDGET_S (the sum of LIMITS) for the parts plus RESERVE_S for the
# interpreter's start, the card probe, the summary and the archive. How each limit was sized (none has run on a GPU
# yet; the CPU figures are docs/performance.md's, the GPU ones follow from them and the memory estimate):
# - setup 60 s: two import probes of torch + the project (~3 s each here; 6 s for the whole part in the dry run),
#   nvidia-smi and pip list, and, when --wheelhouse installs, pip from local files with the node's torch kept
#   (~90 wheels, fastai's closure; unmeasured: an estimate of 30-45 s);
# - cuda_tests 75 s: 10 CUDA tests of 5 quarter-width steps each plus the user commands (main.py train / resume /
#   test, demo, two DDP processes), each a new process of ~10 s start-up (imports, CUDA context);
# - benchmark 100 s: ~35 s of start-up, FLOP count and memory estimate, then 3 precisions x (ABINet N, ConCLR N,
#   ABINet 3N) x 8 steps = 56 N images per precision; at N = 384 and 37 GFLOP per image and step (3 x 12.47 at full
#   size) that is ~0.8 PFLOP, ~3 s in bf16 and ~8 s in TF32 at 100-250 TFLOP/s achieved; the loss and loader
#   sections (~25 s of CPU work) and evaluation at batch 1 and 384 make the rest;
# - train 55 s: 40 s of rendering 4,000 words, start-up and two evaluations, then the steps that fit
#   (train_steps) -- at the 2,500 images/s target a step of 384 takes ~0.15 s, so ~65 steps (40 at the least);
# - study 50 s, or all that is left when earlier parts ended early: cut to the steps that fit (gpu_check_parts).
LIMITS = {'setup': 60, 'cuda_tests': 75, 'benchmark': 100, 'train': 55, 'study': 50}
MIN_START = {'train': 45, 'study': 45}
OPTIONAL = ('train', 'study')  # they start only when at least MIN_START of the budget is left
BUDGET_S = 340  # = sum(LIMITS.values())
RESERVE_S = 20  # start-up, card probe, summary, archive: BUDGET_S + RESERVE_S = 360 s, the 6 minutes
DRY_RUN_LIMIT_S = 900  # per part on a CPU shared with other jobs; only an injected timeout should ever hit it
TRAIN_STEPS = 300
TRAIN_STARTUP_S = 40  # the training part's rendering, start-up and evaluations (see LIMITS)
FALLBACK_STEPS = 40  # the training part's steps when the benchmark measured no step time (it failed or was cut)
# where the `cuda`-marked tests live (collecting all tests costs); the dry run leaves out the user commands, whose
# CPU variants (the same code on the CPU) run in the normal test suite, to stay within its few minutes
CUDA_TEST_FILES = ('tests/test_cuda_path.py', 'tests/test_user_commands.py')
DRY_RUN_TEST_FILES = ('tests/test_cuda_path.py',)
KILL_GRACE_S = 5
# Benchmark rows the summary quotes (the GPU targets and the numbers the docs quote), with their suffixes.
SUMMARY_ROWS = ('train.abinet.img_s', 'train.conclr.img_s', 'train.abinet.peak_gib', 'train.conclr.peak_gib',
                'train.ratio', 'train.abinet.mfu', 'train.abinet.mfu_datasheet', 'share.conaug_clr',
                'loss.abinet.vs_fp32', 'loss.conclr.vs_fp32', 'infer.b1.img_s', 'infer.b64.img_s',
                'loader.aug.img_s', 'loader.workers_needed')


@dataclass
class PartResult:
    """How one part ended: status ok | FAILED | TIMED OUT | SKIPPED, why, and what it measured."""

    name: str
    status: str = 'not run'
    seconds: float = 0.0
    limit_s: float = 0.0
    detail: str = ''
    facts: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- processes


def run_limited(cmd: list[str], log: Path, limit_s: float, env: dict[str, str]) -> tuple[int | None, float]:
    """Run `cmd` in its own process group with stdout and stderr into `log`; (exit status or None if it ran past
    `limit_s` and was killed with all its children, seconds)."""
    start = time.monotonic()
    with open(log, 'ab') as out:
        out.write(f'$ {" ".join(cmd)}\n'.encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(limit_s, 0.1))
        except subprocess.TimeoutExpired:
            rc = None
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=KILL_GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
            out.write(f'\n[gpu_check] killed after {limit_s:.0f} s (the part\'s limit)\n'.encode())
    return rc, time.monotonic() - start


def log_tail(log: Path, lines: int = 6) -> str:
    """The last non-empty lines of a log, joined with ' | ' (for the summary's 'why')."""
    if not log.is_file():
        return ''
    text = [line.strip() for line in log.read_text(errors='replace').splitlines() if line.strip()]
    return ' | '.join(text[-lines:])[-600:]


def read_json(path: Path) -> dict[str, Any]:
    """A part's JSON output, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------- the parts


@dataclass
class Context:
    """What the parts share: interpreter, folders, mode, and the environment the children get."""

    python: str
    out: Path
    work: Path
    dry_run: bool
    wheelhouse: Path | None
    venv: Path
    env: dict[str, str]
    results: dict[str, PartResult] = field(default_factory=dict)


def _parts_cmd(ctx: Context, part: str, *extra: str) -> list[str]:
    return [ctx.python, '-m', PARTS_MODULE, part, '--dir', str(ctx.out / part), '--work', str(ctx.work / part),
            *(['--dry-run'] if ctx.dry_run else []), *extra]


def cmd_setup(ctx: Context, limit_s: float) -> list[str]:
    return _parts_cmd(ctx, 'setup', '--venv', str(ctx.venv),
                      *(['--wheelhouse', str(ctx.wheelhouse)] if ctx.wheelhouse else []))


def cmd_cuda_tests(ctx: Context, limit_s: float) -> list[str]:
    files = DRY_RUN_TEST_FILES if ctx.dry_run else CUDA_TEST_FILES
    return [ctx.python, '-m', 'pytest', '-m', 'cuda', *files, '-rA', '-p', 'no:cacheprovider',
            '--junitxml', str(ctx.out / 'cuda_tests' / 'junit.xml')]


def benchmark_args(dry_run: bool, output: Path) -> list[str]:
    """tools.benchmark's arguments: full size on CUDA at the largest batch up to 384 that the memory estimate says
    fits the free memory (--fit_memory: chosen beforehand, no out-of-memory retries); the quick sizes on the CPU
    (dry run), through the same estimate."""
    if dry_run:
        sizes = ['--quick', '--device', 'cpu', '--amp', 'bf16', 'fp16', '--infer_batch', '4']
    else:
        sizes = ['--size', 'official', '--batch', '384', '--device', 'cuda', '--steps', '5', '--warmup', '2',
                 '--infer_batch', '384', '--loss_steps', '10', '--loss_batch', '64']
    return [*sizes, '--fit_memory', '--channels_last', '--cudnn_benchmark',
            '--sections', 'train', 'conaug', 'clr', 'losses', 'loader', 'infer', '--output', str(output)]


def cmd_benchmark(ctx: Context, limit_s: float) -> list[str]:
    return [ctx.python, '-m', 'tools.benchmark',
            *benchmark_args(ctx.dry_run, ctx.out / 'benchmark' / 'benchmark.json')]


def train_steps(ctx: Context, limit_s: float) -> int:
    """TRAIN_STEPS, fewer when the benchmark's bf16 ABINet step says they would not fit in the part's limit, and
    FALLBACK_STEPS when the benchmark left no step time to go by."""
    metrics = read_json(ctx.out / 'benchmark' / 'benchmark.json').get('metrics', {})
    step = metrics.get('train.abinet.step_s@bf16')
    if ctx.dry_run or not step:
        return 6 if ctx.dry_run else FALLBACK_STEPS
    return int(max(FALLBACK_STEPS, min(TRAIN_STEPS, (limit_s - TRAIN_STARTUP_S) / (1.5 * step))))


def cmd_train(ctx: Context, limit_s: float) -> list[str]:
    return _parts_cmd(ctx, 'train', '--steps', str(train_steps(ctx, limit_s)))


def cmd_study(ctx: Context, limit_s: float) -> list[str]:
    return _parts_cmd(ctx, 'study', '--seconds', str(int(limit_s)))


COMMANDS: dict[str, Callable[[Context, float], list[str]]] = {
    'setup': cmd_setup, 'cuda_tests': cmd_cuda_tests, 'benchmark': cmd_benchmark, 'train': cmd_train,
    'study': cmd_study}


def injected(kind: str, python: str) -> list[str]:
    """The stand-in command of an injected fault: a failing part, or one that never ends."""
    if kind == 'fail':
        return [python, '-c', 'import sys; print("injected failure (--inject)"); sys.exit(3)']
    return [python, '-c', 'import time; print("injected hang (--inject)", flush=True); time.sleep(3600)']


# ----------------------------------------------------------------------------------------------- verdicts


def judge_cuda_tests(ctx: Context, result: PartResult) -> None:
    """Counts from the JUnit XML; a part whose tests were all skipped did not test the GPU."""
    try:
        root = ET.parse(ctx.out / 'cuda_tests' / 'junit.xml').getroot()
    except (OSError, ET.ParseError):
        return
    suite = root if root.tag == 'testsuite' else root.find('testsuite')
    if suite is None:
        return
    counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
    counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    result.facts.update(counts)
    result.detail = (f'{counts["passed"]} passed, {counts["failures"]} failed, {counts["errors"]} errors, '
                     f'{counts["skipped"]} skipped')
    if result.status == 'ok' and (counts['passed'] == 0 or counts['skipped']):
        result.status = 'FAILED'
        result.detail += ' (skipped tests: the GPU was not seen by pytest)'


def judge_benchmark(ctx: Context, result: PartResult) -> None:
    """PASS / FAIL counts and the quoted rows of the benchmark's JSON."""
    doc = read_json(ctx.out / 'benchmark' / 'benchmark.json')
    rows = doc.get('rows', [])
    if not rows:
        return
    verdicts = [r['status'] for r in rows]
    result.facts['rows'] = [r for r in rows if r['key'].split('@')[0] in SUMMARY_ROWS or r['status'] == 'FAIL']
    result.facts['batch'] = doc.get('meta', {}).get('batch')
    result.detail = (f'{verdicts.count("PASS")} PASS, {verdicts.count("FAIL")} FAIL, {verdicts.count("SKIP")} SKIP '
                     f'of the targets; {len(rows)} rows')


def judge_child(ctx: Context, result: PartResult) -> None:
    """A child part's own result.json (setup, train, study) supplies its detail and facts."""
    doc = read_json(ctx.out / result.name / 'result.json')
    if doc:
        result.facts.update(doc.get('facts', {}))
        result.detail = doc.get('detail', result.detail)
        if doc.get('ok') is False and result.status == 'ok':
            result.status = 'FAILED'


JUDGES = {'cuda_tests': judge_cuda_tests, 'benchmark': judge_benchmark, 'setup': judge_child, 'train': judge_child,
          'study': judge_child}


def run_part(ctx: Context, name: str, limit_s: float, fault: str | None) -> PartResult:
    """Run one part within `limit_s` and judge how it ended."""
    folder = ctx.out / name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / 'output.log'
    log.write_text('')
    try:
        cmd = injected(fault, ctx.python) if fault else COMMANDS[name](ctx, limit_s)
        rc, seconds = run_limited(cmd, log, limit_s, ctx.env)
    except Exception as e:  # the part could not even start (a missing interpreter, an unreadable file)
        with open(log, 'a') as out:
            out.write(f'[gpu_check] could not run the part: {type(e).__name__}: {e}\n')
        return PartResult(name, 'FAILED', 0.0, round(limit_s), f'could not start: {type(e).__name__}: {e}'[:600])
    result = PartResult(name, 'ok' if rc == 0 else ('TIMED OUT' if rc is None else 'FAILED'), round(seconds, 1),
                        round(limit_s))
    if not fault:
        JUDGES[name](ctx, result)
    if rc is None:
        result.detail = f'killed at its {limit_s:.0f} s limit; ' + (result.detail or log_tail(log, 3))
    elif rc != 0:
        result.detail = f'exit status {rc}: ' + log_tail(log) + (f' ({result.detail})' if result.detail else '')
    return result


# ----------------------------------------------------------------------------------------------- summary


def _cell(text: Any) -> str:
    return str(text).replace('|', '/').replace('\n', ' ')


def _value(row: dict[str, Any]) -> str:
    value = row.get('value')
    if value is None:
        return 'skipped'
    return f'{value:.4g}' if abs(value) < 1e5 else f'{value:.3e}'


def write_summary(ctx: Context, meta: dict[str, Any]) -> Path:
    """summary.md (a table of the parts, then the benchmark's quoted rows) and summary.json."""
    lines = [f'# GPU check: {meta["card"]}', '',
             f'{meta["when"]}; {"DRY RUN on the CPU (tiny sizes); " if ctx.dry_run else ""}'
             f'total {meta.get("seconds", 0):.0f} s of a {meta["budget_s"]} s budget; `{meta["command"]}`', '',
             '| part | status | seconds | limit | detail |', '|---|---|---:|---:|---|']
    for name in PARTS:
        r = ctx.results.get(name, PartResult(name))
        lines.append(f'| {name} | {r.status} | {r.seconds:g} | {r.limit_s:g} | {_cell(r.detail)} |')
    setup = ctx.results.get('setup')
    if setup and setup.facts:
        lines += ['', '## Environment', '']
        lines += [f'- {k}: {_cell(v)}' for k, v in setup.facts.items()
                  if v is not None and not isinstance(v, (dict, list))]
    bench = ctx.results.get('benchmark')
    if bench and bench.facts.get('rows'):
        lines += ['', f'## Benchmark rows (full table: benchmark/output.log, batch {bench.facts.get("batch")})', '',
                  '| metric | value | unit | target | result | note |', '|---|---:|---|---|---|---|']
        lines += [f'| {_cell(r["label"])} | {_value(r)} | {r["unit"]} | {r["target"]} | {r["status"]} | '
                  f'{_cell(r["note"])} |' for r in bench.facts['rows']]
    train = ctx.results.get('train')
    if train and (ctx.out / 'train' / 'loss_curve.png').is_file():
        lines += ['', '## Training run', '', '![loss curve](train/loss_curve.png)']
    ctx.out.mkdir(parents=True, exist_ok=True)
    path = ctx.out / 'summary.md'
    path.write_text('\n'.join(lines) + '\n')
    (ctx.out / 'summary.json').write_text(json.dumps(
        {'meta': meta, 'parts': [asdict(ctx.results.get(n, PartResult(n))) for n in PARTS]}, indent=2))
    return path


# ----------------------------------------------------------------------------------------------- driver


def card_name(python: str, dry_run: bool) -> str:
    """The GPU's name as a folder name (torch.cuda.get_device_name, else nvidia-smi); 'cpu-dry-run' for a dry run."""
    if dry_run:
        return 'cpu-dry-run'
    probes = ([python, '-c', 'import torch; print(torch.cuda.get_device_name(0))'],
              ['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'])
    for cmd in probes:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            return re.sub(r'[^A-Za-z0-9._-]+', '_', lines[0].strip()).strip('_') or 'unknown-gpu'
    return ''


def parse_faults(items: list[str]) -> dict[str, str]:
    """--inject PART=fail|timeout, checked."""
    faults = {}
    for item in items:
        part, _, kind = item.partition('=')
        if part not in PARTS or kind not in ('fail', 'timeout'):
            raise SystemExit(f'error: --inject {item!r}: expected PART=fail|timeout, PART one of {", ".join(PARTS)}')
        faults[part] = kind
    return faults


def parse_limits(items: list[str]) -> dict[str, float]:
    """--limit PART=SECONDS, checked."""
    limits = {}
    for item in items:
        part, _, seconds = item.partition('=')
        try:
            limits[part] = float(seconds)
        except ValueError:
            limits[part] = -1.0
        if part not in PARTS or limits[part] <= 0:
            raise SystemExit(f'error: --limit {item!r}: expected PART=SECONDS with PART one of {", ".join(PARTS)}')
    return limits


def part_limit(name: str, args: argparse.Namespace, overrides: dict[str, float], left: float) -> float | None:
    """The part's time limit within what is left of the budget; None when an optional part would not fit. The last
    part (the study) may use all that is left."""
    limit = overrides.get(name, DRY_RUN_LIMIT_S if args.dry_run else LIMITS[name])
    if name in OPTIONAL and left < MIN_START[name] and name not in overrides:
        return None
    if name == PARTS[-1] and name not in overrides and not args.dry_run:
        limit = max(limit, left)
    return max(1.0, min(limit, left))


def check(args: argparse.Namespace) -> int:
    """Run the parts in order and keep summary.md current; exit status 0 when every part that ran was ok."""
    python = args.python or sys.executable
    card = card_name(python, args.dry_run)
    if not card:
        print('error: no CUDA GPU seen (torch.cuda and nvidia-smi); run with --dry-run for the CPU path',
              file=sys.stderr)
        return 2
    out = Path(args.log_root) / card
    if out.exists():
        shutil.rmtree(out)
    work = Path(tempfile.mkdtemp(prefix='gpu_check_'))
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'PYTORCH_CUDA_ALLOC_CONF': 'expandable_segments:True'}
    if args.dry_run:
        env.update(CONCLR_TEST_DEVICE='cpu', CONCLR_TEST_SIZE='tiny')
    wheelhouse = Path(args.wheelhouse).resolve() if args.wheelhouse else None
    ctx = Context(python, out, work, args.dry_run, wheelhouse, Path(args.venv).resolve(), env)
    faults, overrides = parse_faults(args.inject), parse_limits(args.limit)
    budget = args.budget if args.budget is not None else (10 * DRY_RUN_LIMIT_S if args.dry_run else BUDGET_S)
    meta = {'card': card, 'when': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'budget_s': budget, 'dry_run': args.dry_run,
            'command': 'bash tools/gpu_check.sh ' + ' '.join(args.argv)}
    start = time.monotonic()
    try:
        for name in PARTS:
            if args.parts and name not in args.parts:
                continue
            left = budget - (time.monotonic() - start)
            limit = part_limit(name, args, overrides, left)
            if limit is None:
                ctx.results[name] = PartResult(name, 'SKIPPED', detail=f'only {max(left, 0):.0f} s of the budget left')
            else:
                print(f'[gpu_check] {name}: limit {limit:.0f} s', flush=True)
                ctx.results[name] = run_part(ctx, name, limit, faults.get(name))
                print(f'[gpu_check] {name}: {ctx.results[name].status} in {ctx.results[name].seconds:g} s', flush=True)
                if name == 'setup' and ctx.results[name].facts.get('installed_into'):
                    ctx.python = ctx.results[name].facts['installed_into']  # the venv the wheelhouse filled
            meta['seconds'] = time.monotonic() - start
            write_summary(ctx, meta)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    summary = write_summary(ctx, meta)
    print(summary.read_text())
    if args.archive:
        print(f'wrote {archive(out, Path(args.archive))}')
    return 0 if all(r.status in ('ok', 'SKIPPED') for r in ctx.results.values()) else 1


def archive(out: Path, folder: Path) -> Path:
    """out/ packed as folder/gpu_check.tar.gz (paths from the repository root when it lies inside it, so that
    `tar xzf gpu_check.tar.gz` in the repository puts it back), and a copy of summary.md beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / 'summary.md', folder / 'summary.md')
    path = folder / 'gpu_check.tar.gz'
    resolved = out.resolve()
    name = resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else Path(resolved.name)
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(resolved, arcname=str(name))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dry-run', action='store_true', help='the CPU path with tiny sizes (seconds to minutes)')
    p.add_argument('--log-root', default=str(REPO_ROOT / 'log' / 'gpu'), help='parent of the <card name> folder')
    p.add_argument('--parts', nargs='*', choices=PARTS, default=None, help='run only these parts')
    p.add_argument('--budget', type=float, default=None,
                   help=f'seconds for all parts (default {BUDGET_S}; {10 * DRY_RUN_LIMIT_S} with --dry-run)')
    p.add_argument('--limit', action='append', default=[], metavar='PART=SECONDS', help='override a part\'s limit')
    p.add_argument('--inject', action='append', default=[], metavar='PART=fail|timeout',
                   help='replace a part by a failing or never-ending command (tests the reporting)')
    p.add_argument('--wheelhouse', default=None, metavar='DIR',
                   help='when a package is missing, install the requirements from DIR with no index (a folder made '
                        'with pip download: docs/reference.md#installation-without-network) into --venv')
    p.add_argument('--venv', default=str(REPO_ROOT / '.venv'),
                   help='the venv --wheelhouse installs into (default .venv; created with --system-site-packages)')
    p.add_argument('--python', default=None, help='interpreter for the parts (default: this one)')
    p.add_argument('--archive', default=None, metavar='DIR',
                   help='also pack the results as DIR/gpu_check.tar.gz (+ summary.md), e.g. to copy them off the node')
    p.add_argument('--keep-work', action='store_true', help='keep the temporary work folder (rendered data, runs)')
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point (tools/gpu_check.sh)."""
    return check(parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
