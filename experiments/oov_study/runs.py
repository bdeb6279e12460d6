"""One training run of the study: its project config, training, evaluation, and its cache in the output folder.

A run lives in <output>/runs/<run id>/ (work directory: train.txt, TensorBoard events, its final checkpoint,
per-checkpoint evaluations under eval/) with its config in <output>/configs/<run id>.yaml. run.json, written last
(atomically), marks it finished: it holds the run's spec and results, with paths relative to the output folder.
A run whose run.json holds the same spec is not trained again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from configuration import Config
from experiments.oov_study.data import lexicon_split
from experiments.oov_study.preset import ExperimentError, preset_value, set_nested
from runtime.atomic_file import write_json_atomically
from runtime.checkpoint import PERIODIC, load_checkpoint, periodic_checkpoints
from runtime.stop_signal import StopSignal
from training import testing, train
from training.builders import build_model

RUN_FILE = 'run.json'
RETRAIN_FILE = 'retrain.json'  # in the output folder: {run id: why} of finished runs to be trained again


@dataclass(frozen=True)
class RunSpec:
    """What defines one run: arm, seed, steps, |V| and the arm's project config before the study's keys."""

    arm: str
    seed: int
    steps: int
    vocab_size: int
    tree: dict
    kind: str = 'steps'  # 'steps' (the same-steps comparison) or 'wall' (equal wall-clock baseline)
    retrain: int = 0  # > 0: a retrain of a superseded run, in its own folder (the old one is kept)

    @property
    def run_id(self) -> str:
        """Folder and checkpoint name: v<|V|>-<arm>[-wall]-s<seed>[-r<retrain>]."""
        tail = f'-r{self.retrain}' if self.retrain else ''
        return f'v{self.vocab_size}-{self.arm}{"-wall" if self.kind == "wall" else ""}-s{self.seed}{tail}'

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as run.json stores it (`retrain` only when set, so older records still match)."""
        out = {'arm': self.arm, 'seed': self.seed, 'steps': self.steps, 'vocab_size': self.vocab_size,
               'kind': self.kind, 'tree': self.tree}
        if self.retrain:
            out['retrain'] = self.retrain
        return out


def superseded(record: dict[str, Any]) -> bool:
    """Whether a finished run cannot be shown to have seen the study's data (no training-data digest): it stays in
    the log and the report but is never counted in the statistics; a retrain takes its place."""
    return not record.get('data_digest')


def superseded_why(record: dict[str, Any], asked: dict[str, str]) -> str | None:
    """Why a finished run is superseded (None when it is not): no training-data digest, or a retrain asked for
    (`asked`: the output folder's retrain requests)."""
    if superseded(record):
        return 'recorded no training-data digest (trained in an earlier design of the study), so it cannot be ' \
               'shown to have seen these renders'
    return asked.get(record['run_id'])


def retrain_requests(output: Path) -> dict[str, str]:
    """{run id: why} of the finished runs in `output` asked to be trained again (`--retrain`)."""
    path = output / RETRAIN_FILE
    return json.loads(path.read_text(encoding='utf-8')) if path.is_file() else {}


def ask_retrain(output: Path, run_ids: Sequence[str]) -> dict[str, str]:
    """Record that these finished runs are to be trained again under run id <id>-r1 (each kept in the log, counted
    nowhere); returns every request of the folder. An id that is no finished first run there is an ExperimentError."""
    asked = retrain_requests(output)
    for run_id in run_ids:
        path = output / 'runs' / run_id / RUN_FILE
        if not path.is_file():
            raise ExperimentError(f'--retrain {run_id}: no finished run {run_id} in {output / "runs"}')
        record = json.loads(path.read_text(encoding='utf-8'))
        if record['spec'].get('retrain'):
            raise ExperimentError(f'--retrain {run_id}: a retrain is not trained again (only a first run is)')
        if run_id not in asked:
            asked[run_id] = f'retrain asked for on {time.strftime("%Y-%m-%d")} (--retrain)' + (
                '' if record.get('test_digests') else ': it recorded no test-set digests')
    if run_ids:
        write_json_atomically(output / RETRAIN_FILE, asked)
    return asked


@dataclass(frozen=True)
class RunPlace:
    """Where a run reads and writes: the output folder, its data and the sets it is evaluated on."""

    output: Path
    train_root: Path
    curve_roots: tuple[Path, ...]
    final_roots: tuple[Path, ...]
    benchmarks: tuple[str, ...]  # names among final_roots split by the lexicon
    lexicon: frozenset[str]
    iters_per_epoch: int
    data_digest: str | None = None  # of the training LMDB (experiments/oov_study/data.lmdb_digest)
    test_digests: dict[str, str] | None = None  # {synthetic test set: lmdb_digest} (IV and the OOV sets)


def save_period(steps: int, points: int, show_iters: int) -> int:
    """Evaluation / checkpoint period: at most `points` periodic checkpoints over `steps` (the last one at
    `steps`), and a multiple of `show_iters` so that no evaluation falls inside a logged speed window."""
    period = max(1, math.ceil(steps / points))
    return math.ceil(period / show_iters) * show_iters


def equal_wall_steps(steps: int, reference_seconds: float, baseline_seconds: float) -> int:
    """Baseline steps that fit in the reference run's training time, both runs having taken `steps` steps:
    floor(reference_seconds / (baseline_seconds / steps))."""
    if steps < 1 or reference_seconds <= 0 or baseline_seconds <= 0:
        raise ValueError(f'need positive steps and training times, got {steps}, {reference_seconds}, '
                         f'{baseline_seconds}')
    return max(1, math.floor(reference_seconds * steps / baseline_seconds + 1e-9))


def training_seconds(timings: Sequence[dict[str, float]]) -> tuple[float, int]:
    """(seconds, steps) summed over IterationCallback.timings windows: training without evaluation or saving."""
    return sum(t['seconds'] for t in timings), sum(int(t['steps']) for t in timings)


def cores_busy(timings: Sequence[dict[str, float]]) -> float | None:
    """The training process's CPU seconds per second over the windows that recorded them (None if none did): near
    the torch thread count when the run had the CPU to itself, lower when other jobs shared it."""
    timed = [t for t in timings if 'cpu_seconds' in t]
    return sum(t['cpu_seconds'] for t in timed) / sum(t['seconds'] for t in timed) if timed else None


def write_run_config(spec: RunSpec, place: RunPlace, curve_points: int, decay_at: float | None) -> Path:
    """The run's project config at <output>/configs/<run id>.yaml (absolute data paths: readable from anywhere)."""
    tree = json.loads(json.dumps(spec.tree))
    period = save_period(spec.steps, curve_points, preset_value(tree, 'training.show_iters'))
    for key, value in {'global.name': spec.run_id, 'global.workdir': str(place.output / 'runs'),
                       'global.seed': spec.seed, 'global.phase': 'train',
                       'dataset.train.roots': [str(place.train_root)],
                       'dataset.test.roots': [str(p) for p in place.curve_roots], 'training.max_iters': spec.steps,
                       'training.epochs': math.ceil(spec.steps / place.iters_per_epoch) + 1,
                       'training.eval_iters': period, 'training.save_iters': period, 'training.start_iters': 0}.items():
        set_nested(tree, key, value)
    if decay_at is not None:
        # periods are in epochs: the lr drops after decay_at of this run's steps, whatever their number; the second
        # phase outlasts the run (max_iters ends it)
        epochs = preset_value(tree, 'training.epochs')
        set_nested(tree, 'optimizer.scheduler.periods', [decay_at * spec.steps / place.iters_per_epoch, epochs])
    path = place.output / 'configs' / f'{spec.run_id}.yaml'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def evaluate_checkpoint(config_path: Path, checkpoint: Path, roots: Sequence[Path], workdir: Path, name: str,
                        device: torch.device, workers: int | None = None) -> dict[str, dict[str, float]]:
    """main.test of one checkpoint on `roots`: {set name: {'cwr', 'ccr', 'samples', 'left_out'}}."""
    config = Config(config_path)
    config.global_phase = 'test'
    config.global_workdir = str(workdir)
    config.global_name = name
    config.model_checkpoint = str(checkpoint)
    config.dataset_test_roots = [str(r) for r in roots]
    if workers is not None:
        config.dataset_num_workers = workers
    rows = testing.test(config, device, image_only=True)
    return {str(r['dataset']): {'cwr': float(r['cwr']), 'ccr': float(r['ccr']), 'samples': int(r['samples']),
                                'left_out': int(r['left out'])} for r in rows if r['dataset'] != 'average'}


def _drop_checkpoints(saved: Sequence[Path], final: Path, workdir: Path) -> None:
    for path in saved:
        if path != final:
            path.unlink(missing_ok=True)
    for path in workdir.glob('best-*.pth'):  # chosen on the test subsets: not a result to keep
        path.unlink(missing_ok=True)


def train_and_evaluate(spec: RunSpec, place: RunPlace, experiment: dict[str, Any], device: torch.device,
                       resume: Path | None = None, stop: StopSignal | None = None) -> dict[str, Any]:
    """Train one run (from `resume`, a periodic checkpoint of it, when given), evaluate its periodic checkpoints on
    the curve subsets and its final one on every set. With `stop`, SIGINT / SIGTERM end training after the current
    step with a resumable checkpoint (Interrupted)."""
    config_path = write_run_config(spec, place, experiment['curve_points'], experiment['decay_at'])
    config = Config(config_path)
    if resume is not None:
        config.training_resume = str(resume)
    start = time.perf_counter()
    callback = train.train(config, device, stop=stop)
    wall = time.perf_counter() - start
    seconds, timed_steps = training_seconds(callback.timings)
    if callback.iteration != spec.steps or timed_steps != spec.steps:
        raise ExperimentError(f'{config.workdir}: training stopped at step {callback.iteration} ({timed_steps} '
                              f'timed), expected {spec.steps}')
    saved = list(callback.saved)  # the periodic checkpoints, oldest first; one per evaluation
    iterations = [int(h['iteration']) for h in callback.history][-len(saved):]
    if not saved or iterations[-1] != spec.steps:
        raise ExperimentError(f'{config.workdir}: no checkpoint of the final step {spec.steps}')
    start = time.perf_counter()
    workers = experiment['eval_workers']
    curve = [{'iteration': it, **evaluate_checkpoint(config_path, path, place.curve_roots, config.workdir / 'eval',
                                                     f'iter_{it:06d}', device, workers)}
             for it, path in zip(iterations, saved)]
    final = evaluate_checkpoint(config_path, saved[-1], place.final_roots, config.workdir / 'eval', 'final', device,
                                workers)
    lexicon = {name: lexicon_split(config.workdir / 'eval' / 'final' / 'predictions' / f'{name}.tsv', place.lexicon)
               for name in place.benchmarks}
    if not experiment['keep_checkpoints']:
        _drop_checkpoints(saved, saved[-1], config.workdir)
    parameters = sum(p.numel() for p in build_model(config).parameters())
    relative = place.output.resolve()
    return {'spec': spec.as_dict(), 'run_id': spec.run_id, 'steps': spec.steps, 'parameters': parameters,
            'data_digest': place.data_digest, 'test_digests': place.test_digests,
            'config': os.path.relpath(config_path.resolve(), relative),
            'workdir': os.path.relpath(config.workdir.resolve(), relative),
            'checkpoint': os.path.relpath(saved[-1].resolve(), relative),
            'train_seconds': seconds, 'seconds_per_step': seconds / spec.steps, 'wall_seconds': wall,
            'resumed_from': None if resume is None else int(PERIODIC.match(resume.name)['iteration']),
            'cores_busy': cores_busy(callback.timings), 'torch_threads': torch.get_num_threads(),
            'images_per_second': config.dataset_train_batch_size * spec.steps / max(seconds, 1e-9),
            'test_seconds': time.perf_counter() - start, 'final': final, 'lexicon': lexicon, 'curve': curve,
            'history': [dict(h) for h in callback.history], 'timings': [dict(t) for t in callback.timings]}


def finished_runs(output: Path) -> list[dict[str, Any]]:
    """The records of every finished run in `output`."""
    return [json.loads(p.read_text(encoding='utf-8')) for p in sorted((output / 'runs').glob(f'*/{RUN_FILE}'))]


def steps_done(output: Path, spec: RunSpec) -> int:
    """The iteration of a cut-off run's newest periodic checkpoint (where it would resume), else 0."""
    saved = periodic_checkpoints(output / 'runs' / spec.run_id, spec.run_id)
    return int(PERIODIC.match(saved[-1].name)['iteration']) if saved else 0


def estimate_seconds(spec: RunSpec, finished: Sequence[dict[str, Any]], done: int = 0) -> float | None:
    """Seconds `spec` should take to train its steps after `done` and be evaluated, going by the finished runs of
    the same arm and |V| (else of the same arm, else of the same model class): their median training seconds per
    step (complete for resumed runs too, unlike main.train's wall time; set-up adds under a minute), plus their
    median evaluation seconds (a median, so one run slowed by other jobs does not hold back the rest). None when no
    such run has finished."""
    def model(tree: dict) -> Any:
        return tree.get('model', {}).get('name')

    arm = [r for r in finished if r['spec']['arm'] == spec.arm]
    pool = ([r for r in arm if r['spec']['vocab_size'] == spec.vocab_size] or arm
            or [r for r in finished if model(r['spec']['tree']) == model(spec.tree)])
    if not pool:
        return None
    per_step = statistics.median(r['train_seconds'] / r['steps'] for r in pool)
    return per_step * max(spec.steps - done, 0) + statistics.median(r['test_seconds'] for r in pool)


def finished_run(output: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The cached results of `spec` in `output`, or None when it has not finished there."""
    path = output / 'runs' / spec.run_id / RUN_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding='utf-8'))
    return record if record.get('spec') == json.loads(json.dumps(spec.as_dict())) else None


def run_or_load(spec: RunSpec, place: RunPlace, experiment: dict[str, Any], device: torch.device,
                say: Callable[[str], None], stop: StopSignal | None = None) -> dict[str, Any]:
    """A finished run's cached results, or train and evaluate it: a half-done run continues from its newest
    periodic checkpoint (whose records hold the timings and evaluations so far); one without such a checkpoint starts
    over."""
    record = finished_run(place.output, spec)
    if record is not None:
        return record
    workdir = place.output / 'runs' / spec.run_id
    saved = periodic_checkpoints(workdir, spec.run_id)
    if saved and load_checkpoint(saved[-1]).get('records') is not None:  # older checkpoints lack the timings
        say(f'resuming {spec.run_id} from {saved[-1].name} ({spec.steps} steps in all)')
        record = train_and_evaluate(spec, place, experiment, device, resume=saved[-1], stop=stop)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        say(f'training {spec.run_id} for {spec.steps} steps')
        record = train_and_evaluate(spec, place, experiment, device, stop=stop)
    record['finished'] = time.strftime('%Y-%m-%d %H:%M')
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(workdir / RUN_FILE, record)
    say(f'{spec.run_id}: {spec.steps} steps, {record["train_seconds"]:.1f} s training, IV cwr '
        f'{100 * record["final"]["iv"]["cwr"]:.2f} %, OOV-words cwr {100 * record["final"]["oov_words"]["cwr"]:.2f} %')
    return record
