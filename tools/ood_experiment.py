"""Does ConCLR help out of vocabulary? One command renders the data, trains ABINet-Vision and ConCLR-Vision,
evaluates them in vocabulary (IV) and out of vocabulary (OOV), and writes the report into a folder.

    python tools/ood_experiment.py --preset configs/experiment_cpu.yaml --output log/ood_cpu

A preset is a YAML file with three parts:

  experiment:  the study's own settings (EXPERIMENT_DEFAULTS below: vocabulary, renders, seeds, curve points,
               t-SNE size...); read by this tool only, an unknown key is an error naming the closest known one.
  config:      an ordinary project config (configs/template.yaml keys) shared by both models; its
               training.max_iters is the number of optimiser steps of the same-steps comparison.
  models:      {abinet: ..., conclr: ...}: ordinary config sections merged over `config` for each model.

The tool owns the keys that tie runs to the study (global.name/workdir/seed/phase, dataset.train/test.roots,
training.epochs/eval_iters/save_iters/start_iters, model.checkpoint, and optimizer.scheduler.periods when
experiment.decay_at is set); a preset that sets one of them is refused.

Runs per seed: `abinet` and `conclr` for max_iters steps each (same seed, data, model size, schedule), then
`abinet_wall`: ABINet-Vision for as many steps as fit in the ConCLR run's measured training time. Each run
evaluates and saves every max_iters / curve_points steps on small IV / OOV subsets; the saved checkpoints are
then evaluated per set with main.test (training-time evaluation pools its test roots into one number), which
gives the learning curves. The tables use each run's final checkpoint (never the best-on-test one).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import math
import os
import platform
import re
import shutil
import string
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import main as abinet_main  # noqa: E402  (this tool's own entry point is main())
from checkpoint import CheckpointError  # noqa: E402
from dataset import DatasetError, ImageDataset, close_lmdb, dataset_kwargs, open_lmdb  # noqa: E402
from tools.create_lmdb_dataset import write_lmdb  # noqa: E402
from tools.render_synthetic import _dictionary_words, find_fonts, make_vocabulary, render_split  # noqa: E402
from utils import REPO_ROOT, CharsetMapper, Config, ConfigError, tune_malloc  # noqa: E402

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    'vocab_size': 2000,        # |V|: English words the models train on
    'min_len': 3,              # shortest word (characters)
    'max_len': 12,             # longest word (characters)
    'train_images': 50000,     # renders of V for training
    'test_images': 1000,       # renders in each synthetic test set (IV, OOV-words, OOV-random)
    'oov_vocab_size': 1000,    # distinct unseen words, and distinct random strings, the OOV sets draw from
    'curve_images': 200,       # first images of each synthetic test set used for the learning curves
    'curve_points': 5,         # evaluations (and checkpoints) per run; at most 5, training keeps the last five
    'data_seed': 0,            # seed of vocabularies and renders (the same data for every training seed)
    'render_workers': 2,       # processes rendering images
    'image_height': 32,        # rendered height in pixels (before the model's resize)
    'seeds': [0],              # training seeds; tables give mean and spread over them
    'equal_wall_clock': True,  # also train ABINet-Vision for ConCLR's training time (second table)
    'decay_at': 0.8,           # lr *= optimizer.scheduler.gamma after this fraction of each run; null = preset's
    'benchmarks': True,        # evaluate on the real LMDBs in benchmark_dir when present
    'benchmark_dir': None,     # null = <repo>/../shared/benchmarks
    'tsne_images': 300,        # images of each OOV set in the t-SNE pair (first seed); 0 = no t-SNE
    'keep_checkpoints': False,  # keep every periodic checkpoint (false: only each run's final one)
    'eval_workers': None,      # DataLoader workers of the main.test evaluations; null = dataset.num_workers
    'torch_threads': None,     # torch.set_num_threads for the whole study; null = torch's default
}
MAX_CURVE_POINTS = 5  # IterationCallback keeps the last five periodic checkpoints (configs/template.yaml)
TOOL_KEYS = ('global_name', 'global_workdir', 'global_seed', 'global_phase', 'dataset_train_roots',
             'dataset_test_roots', 'training_epochs', 'training_eval_iters', 'training_save_iters',
             'training_start_iters', 'training_resume', 'model_checkpoint')
MODELS = ('abinet', 'conclr')
RUNS = ('abinet', 'conclr', 'abinet_wall')
RUN_LABELS = {'abinet': 'ABINet-Vision', 'conclr': 'ConCLR-Vision', 'abinet_wall': 'ABINet-Vision (equal wall-clock)'}
SYNTHETIC_SETS = ('iv', 'oov_words', 'oov_random')
SET_LABELS = {'iv': 'IV', 'oov_words': 'OOV-words', 'oov_random': 'OOV-random'}
BENCHMARK_ORDER = ('IIIT5k_3000', 'SVT', 'IC13_857', 'IC15_2077', 'SVTP', 'CUTE80')
RANDOM_ALPHABET = string.ascii_lowercase + string.digits
EVAL_LINE = re.compile(r'iter (\d+): eval .*\((\d+(?:\.\d+)?) s\)\s*$')
TRAIN_LINE = re.compile(r'iter (\d+): loss = .*?, (\d+(?:\.\d+)?) img/s\b')


class ExperimentError(ValueError):
    """A preset or an output folder the study cannot use."""


# ---------------------------------------------------------------- small pure pieces


def length_counts(lengths: Sequence[int], n: int) -> dict[int, int]:
    """How many of `n` items get each length so their histogram is proportional to `lengths`' (largest
    remainder; ties go to the shorter length)."""
    hist = Counter(lengths)
    total = sum(hist.values())
    if not total:
        raise ValueError('no lengths to match')
    quotas = {k: n * c / total for k, c in sorted(hist.items())}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    left = n - sum(counts.values())
    for k in sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), k))[:left]:
        counts[k] += 1
    return counts


def oov_words(pool: Sequence[str], vocab: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct words of `pool` not in `vocab`, with vocab's length histogram (length_counts)."""
    seen = set(vocab)
    words = []
    for length, count in length_counts([len(w) for w in vocab], n).items():
        candidates = sorted({w for w in pool if len(w) == length and w not in seen})
        if count > len(candidates):
            raise ExperimentError(f'only {len(candidates)} unseen words of {length} letters, asked for {count}')
        words += [candidates[i] for i in rng.choice(len(candidates), size=count, replace=False)]
    return sorted(words)


def random_strings(counts: dict[int, int], rng: np.random.Generator, exclude: Sequence[str] = (),
                   alphabet: str = RANDOM_ALPHABET) -> list[str]:
    """Distinct random strings over `alphabet`, counts[L] of each length L, none of them in `exclude`."""
    taken = set(exclude)
    out: list[str] = []
    for length, count in sorted(counts.items()):
        if count > len(alphabet) ** length - sum(len(w) == length for w in taken):
            raise ExperimentError(f'cannot draw {count} distinct strings of {length} characters')
        made = 0
        while made < count:
            word = ''.join(alphabet[i] for i in rng.integers(len(alphabet), size=length))
            if word not in taken:
                taken.add(word)
                out.append(word)
                made += 1
    return sorted(out)


def mean_spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the spread is None for a single value."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def equal_wall_steps(steps: int, conclr_seconds: float, abinet_seconds: float) -> int:
    """ABINet-Vision steps that fit in ConCLR's training time, both runs having taken `steps` steps:
    floor(conclr_seconds / (abinet_seconds / steps))."""
    if steps < 1 or conclr_seconds <= 0 or abinet_seconds <= 0:
        raise ValueError(f'need positive steps and training times, got {steps}, {conclr_seconds}, {abinet_seconds}')
    return max(1, math.floor(conclr_seconds * steps / abinet_seconds + 1e-9))


def save_period(steps: int, points: int, show_iters: int) -> int:
    """Evaluation / checkpoint period: at most `points` periodic checkpoints over `steps` (the last one at
    `steps`), and a multiple of `show_iters` so that no evaluation falls inside a logged speed window."""
    period = max(1, math.ceil(steps / points))
    return math.ceil(period / show_iters) * show_iters


def eval_seconds(log_text: str) -> float:
    """Seconds spent in training-time evaluations, from the `eval ... (x.x s)` lines of a train.txt."""
    return sum(float(m.group(2)) for m in map(EVAL_LINE.search, log_text.splitlines()) if m)


def window_seconds(log_text: str, batch_size: int, start_iter: int = 0) -> float | None:
    """Pure training seconds from a train.txt: each `iter I: loss = ..., S img/s` line covers the steps since
    the previous one in (steps x batch_size / S) seconds (IterationCallback times them without evaluations,
    checkpoint saves or the set-up before the first step). None when the log holds no such line."""
    total, previous, found = 0.0, start_iter, False
    for m in map(TRAIN_LINE.search, log_text.splitlines()):
        if not m:
            continue
        iteration, speed = int(m.group(1)), float(m.group(2))
        if speed <= 0:
            return None
        total += (iteration - previous) * batch_size / speed
        previous, found = iteration, True
    return total if found else None


def deep_merge(base: dict, update: dict) -> dict:
    """`base` with `update` merged in, nested dicts merged key by key (neither argument changes)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flat_keys(tree: dict, prefix: str = '') -> list[str]:
    """Joined keys of a nested dict ({'a': {'b': 1}} -> ['a_b'])."""
    keys = []
    for key, value in tree.items():
        joined = f'{prefix}_{key}' if prefix else str(key)
        keys += flat_keys(value, joined) if isinstance(value, dict) else [joined]
    return keys


def set_nested(tree: dict, dotted: str, value: Any) -> None:
    """tree['a']['b'] = value for dotted 'a.b', creating the dicts on the way."""
    *parents, last = dotted.split('.')
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def fmt(mean: float, spread: float | None, scale: float = 100.0, signed: bool = False) -> str:
    """`mean ± spread` in percent (points), two decimals; the mean alone when there is no spread."""
    if mean is None or math.isnan(mean):
        return 'n/a'
    text = f'{scale * mean:+.2f}' if signed else f'{scale * mean:.2f}'
    return text if spread is None else f'{text} ± {scale * spread:.2f}'


# ---------------------------------------------------------------- preset


def load_preset(path: str | os.PathLike) -> tuple[dict[str, Any], dict, dict[str, dict]]:
    """(experiment settings with defaults filled in, shared project config, per-model overrides); ExperimentError
    on an unknown part or key or a value of the wrong type."""
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ExperimentError(f'{path}: top level must be a mapping with experiment, config and models')
    unknown = set(data) - {'experiment', 'config', 'models'}
    if unknown:
        raise ExperimentError(f'{path}: unknown part(s) {sorted(unknown)}; a preset has experiment, config, models')
    experiment = dict(EXPERIMENT_DEFAULTS)
    for key, value in (data.get('experiment') or {}).items():
        if key not in EXPERIMENT_DEFAULTS:
            close = difflib.get_close_matches(key, list(EXPERIMENT_DEFAULTS), n=1, cutoff=0.0)
            raise ExperimentError(f'{path}: unknown experiment key {key!r} (did you mean {close[0]!r}?)')
        experiment[key] = _checked(path, key, value)
    config = data.get('config') or {}
    models = data.get('models') or {}
    if not isinstance(config, dict) or not isinstance(models, dict):
        raise ExperimentError(f'{path}: config and models must be mappings')
    if set(models) != set(MODELS):
        raise ExperimentError(f'{path}: models must hold exactly {list(MODELS)}, got {sorted(models)}')
    for source, tree in [('config', config)] + [(f'models.{m}', models[m] or {}) for m in MODELS]:
        owned = sorted(set(flat_keys(tree)) & set(TOOL_KEYS))
        if owned:
            raise ExperimentError(f'{path}: {source} sets {owned}, which the tool sets itself')
    models = {m: models[m] or {} for m in MODELS}
    _check_experiment(path, experiment)
    if experiment['decay_at'] is not None:
        for source, tree in [('config', config)] + [(f'models.{m}', models[m]) for m in MODELS]:
            if 'optimizer_scheduler_periods' in flat_keys(tree):
                raise ExperimentError(f'{path}: {source} sets optimizer.scheduler.periods, which '
                                      'experiment.decay_at replaces (set decay_at: null to keep your periods)')
    return experiment, config, models


def _checked(path: Any, key: str, value: Any) -> Any:
    default = EXPERIMENT_DEFAULTS[key]
    least = {'eval_workers': 0, 'torch_threads': 1}.get(key)
    if least is not None and value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < least):
        raise ExperimentError(f'{path}: experiment.{key} must be null or an integer >= {least}')
    if default is None or value is None:
        if value is None and key not in ('benchmark_dir', 'decay_at', 'eval_workers', 'torch_threads'):
            raise ExperimentError(f'{path}: experiment.{key} must not be null')
        return value
    ok = (isinstance(value, bool) if isinstance(default, bool) else
          isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int) else
          isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float) else
          isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
          if isinstance(default, list) else isinstance(value, type(default)))
    if not ok:
        raise ExperimentError(f'{path}: experiment.{key} expects {type(default).__name__} (like {default!r}), '
                              f'got {value!r}')
    return value


def _check_experiment(path: Any, e: dict[str, Any]) -> None:
    if not 1 <= e['curve_points'] <= MAX_CURVE_POINTS:
        raise ExperimentError(f'{path}: experiment.curve_points must be 1..{MAX_CURVE_POINTS} (the training keeps '
                              'only the last five periodic checkpoints)')
    if not e['seeds'] or len(set(e['seeds'])) != len(e['seeds']):
        raise ExperimentError(f'{path}: experiment.seeds must be a non-empty list of distinct integers')
    if not 1 <= e['min_len'] <= e['max_len']:
        raise ExperimentError(f'{path}: experiment needs 1 <= min_len <= max_len')
    if not 0 < e['curve_images'] <= e['test_images']:
        raise ExperimentError(f'{path}: experiment.curve_images must be 1..test_images')
    if e['decay_at'] is not None and not 0 < e['decay_at'] <= 1:
        raise ExperimentError(f'{path}: experiment.decay_at must be in (0, 1] or null')
    for key in ('vocab_size', 'train_images', 'test_images', 'oov_vocab_size', 'render_workers', 'image_height'):
        if e[key] < 1:
            raise ExperimentError(f'{path}: experiment.{key} must be positive')


# ---------------------------------------------------------------- data


def say(output: Path, message: str) -> None:
    """Print a progress line and append it to <output>/experiment.txt."""
    line = f'[{time.strftime("%H:%M:%S")} ood] {message}'
    print(line, flush=True)
    with open(output / 'experiment.txt', 'a', encoding='utf-8') as f:
        f.write(line + '\n')


def copy_prefix(src: Path, dst: Path, count: int) -> int:
    """Write the first `count` samples of LMDB `src` into a new LMDB `dst` (bytes as they are)."""
    env = open_lmdb(src)
    samples = []
    with env.begin() as txn:
        for index in range(1, count + 1):
            image, label = txn.get(f'image-{index:09d}'.encode()), txn.get(f'label-{index:09d}'.encode())
            samples.append((bytes(image), bytes(label).decode('utf-8')))
    close_lmdb(src)
    return write_lmdb(dst, samples, check_images=False)


def build_data(e: dict[str, Any], folder: Path, output: Path) -> dict[str, Any]:
    """Vocabularies and LMDBs: train (renders of V), iv, oov_words, oov_random and their curve subsets."""
    manifest_path = folder / 'manifest.json'
    keys = ('vocab_size', 'min_len', 'max_len', 'train_images', 'test_images', 'oov_vocab_size', 'curve_images',
            'data_seed', 'image_height')
    wanted = {k: e[k] for k in keys}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get('settings') == wanted:
            say(output, f'reusing the data in {folder} (same settings)')
            return manifest
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    seed = e['data_seed']
    vocab = make_vocabulary(e['vocab_size'], e['min_len'], e['max_len'], np.random.default_rng([seed, 10]), 'words')
    pool = [w for w in _dictionary_words() if e['min_len'] <= len(w) <= e['max_len'] and w.isascii()]
    unseen = oov_words(pool, vocab, e['oov_vocab_size'], np.random.default_rng([seed, 11]))
    randoms = random_strings(length_counts([len(w) for w in vocab], e['oov_vocab_size']),
                             np.random.default_rng([seed, 12]), exclude=set(vocab) | set(unseen))
    vocabs = {'train': vocab, 'oov_words': unseen, 'oov_random': randoms}
    for name, words in vocabs.items():
        (folder / f'vocab_{name}.txt').write_text(''.join(w + '\n' for w in words), encoding='utf-8')
    fonts = find_fonts()
    if not fonts:
        raise ExperimentError('no usable TTF/OTF font found (looked in matplotlib and /usr/share/fonts)')
    plan = [('train', e['train_images'], vocab), ('iv', e['test_images'], vocab),
            ('oov_words', e['test_images'], unseen), ('oov_random', e['test_images'], randoms)]
    sets = {}
    for split_id, (name, num, words) in enumerate(plan):
        render_split(folder / name, num, seed, split_id, words, fonts, e['image_height'], e['render_workers'])
        sets[name] = {'path': str(folder / name), 'images': num, 'vocabulary': len(words)}
        say(output, f'rendered {num} images of {len(words)} strings into {folder / name}')
    for name in SYNTHETIC_SETS:
        copy_prefix(folder / name, folder / f'{name}_curve', e['curve_images'])
        sets[f'{name}_curve'] = {'path': str(folder / f'{name}_curve'), 'images': e['curve_images'],
                                 'vocabulary': sets[name]['vocabulary']}
    manifest = {'settings': wanted, 'sets': sets, 'fonts': fonts, 'seconds': time.perf_counter() - start,
                'length_histogram': {name: dict(sorted(Counter(map(len, words)).items()))
                                     for name, words in vocabs.items()}}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def find_benchmarks(folder: Path) -> list[Path]:
    """LMDB folders (holding data.mdb) under `folder`, the usual six in their usual order first."""
    if not folder.is_dir():
        return []
    found = {p.name: p for p in folder.iterdir() if (p / 'data.mdb').is_file()}
    order = [n for n in BENCHMARK_ORDER if n in found] + sorted(set(found) - set(BENCHMARK_ORDER))
    return [found[n] for n in order]


# ---------------------------------------------------------------- runs


def run_config(shared: dict, model: dict, output: Path, seed: int, run: str, steps: int, iters_per_epoch: int,
               train_root: str, curve_roots: Sequence[str], decay_at: float | None, curve_points: int) -> Path:
    """Write the project config of one run to <output>/configs/seed<seed>_<run>.yaml and return its path."""
    tree = deep_merge(shared, model)
    show = preset_value(tree, 'training.show_iters')
    period = save_period(steps, curve_points, show)
    for key, value in {'global.name': run, 'global.workdir': str(output / 'runs' / f'seed{seed}'),
                       'global.seed': seed, 'global.phase': 'train', 'dataset.train.roots': [train_root],
                       'dataset.test.roots': list(curve_roots), 'training.max_iters': steps,
                       'training.epochs': math.ceil(steps / iters_per_epoch) + 1, 'training.eval_iters': period,
                       'training.save_iters': period, 'training.start_iters': 0}.items():
        set_nested(tree, key, value)
    if decay_at is not None:
        # periods are in epochs; the lr drops after decay_at of this run's steps, whatever their number, and the
        # second phase outlasts the run (training stops after the last phase; max_iters is what ends these runs)
        epochs = preset_value(tree, 'training.epochs')
        set_nested(tree, 'optimizer.scheduler.periods', [decay_at * steps / iters_per_epoch, epochs])
    path = output / 'configs' / f'seed{seed}_{run}.yaml'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def periodic_checkpoints(workdir: Path, name: str) -> dict[int, Path]:
    """{iteration: path} of the periodic checkpoints `<name>_<epoch>_<iteration>.pth` in a run's workdir."""
    pattern = re.compile(rf'^{re.escape(name)}_(\d+)_(\d+)\.pth$')
    found = {}
    for path in workdir.glob(f'{name}_*.pth'):
        m = pattern.match(path.name)
        if m:
            found[int(m.group(2))] = path
    return dict(sorted(found.items()))


def evaluate_checkpoint(config_path: Path, checkpoint: Path, roots: Sequence[str], workdir: Path, name: str,
              device: torch.device, workers: int | None = None) -> dict[str, dict[str, float]]:
    """main.test of one checkpoint on `roots`: {set name (and 'all'): {'cwr', 'ccr', 'samples', 'left_out'}}."""
    config = Config(config_path)
    config.global_phase = 'test'
    config.global_workdir = str(workdir)
    config.global_name = name
    config.model_checkpoint = str(checkpoint)
    config.dataset_test_roots = list(roots)
    if workers is not None:
        config.dataset_num_workers = workers
    rows = abinet_main.test(config, device, image_only=True)
    return {str(r['dataset']): {'cwr': float(r['cwr']), 'ccr': float(r['ccr']), 'samples': int(r['samples']),
                                'left_out': int(r['left out'])} for r in rows if r['dataset'] != 'average'}


def train_run(config_path: Path, steps: int, device: torch.device, curve_roots: Sequence[str],
              final_roots: Sequence[str], experiment: dict[str, Any], output: Path) -> dict[str, Any]:
    """Train one run, evaluate its periodic checkpoints on the curve sets and its final one on every test set."""
    config = Config(config_path)
    workdir = config.workdir
    if workdir.exists():
        shutil.rmtree(workdir)
    start = time.perf_counter()
    callback = abinet_main.train(config, device)
    wall = time.perf_counter() - start
    if callback.iteration != steps:
        raise ExperimentError(f'{workdir}: training stopped at step {callback.iteration}, expected {steps}')
    log = (workdir / 'train.txt').read_text(encoding='utf-8') if (workdir / 'train.txt').is_file() else ''
    evals = eval_seconds(log)
    train_seconds = window_seconds(log, config.dataset_train_batch_size)
    if train_seconds is None:  # no speed lines: all but the evaluations counts
        train_seconds = wall - evals
    checkpoints = periodic_checkpoints(workdir, config.global_name)
    if steps not in checkpoints:
        raise ExperimentError(f'{workdir}: no checkpoint of the final step {steps} (found {sorted(checkpoints)})')
    say(output, f'{workdir.name}: {steps} steps in {wall:.1f} s ({train_seconds:.1f} s training, {evals:.1f} s '
                f'evaluating); evaluating {len(checkpoints)} checkpoints')
    start = time.perf_counter()
    curve = []
    for iteration, path in checkpoints.items():
        rows = evaluate_checkpoint(config_path, path, curve_roots, workdir / 'eval', f'iter_{iteration:06d}', device,
                         experiment['eval_workers'])
        curve.append({'iteration': iteration, **rows})
    final = evaluate_checkpoint(config_path, checkpoints[steps], final_roots, workdir / 'eval', 'final', device,
                      experiment['eval_workers'])
    eval_wall = time.perf_counter() - start
    if not experiment['keep_checkpoints']:
        for iteration, path in checkpoints.items():
            if iteration != steps:
                path.unlink(missing_ok=True)
        for path in workdir.glob('best-*.pth'):  # chosen on the test subsets: not a result to keep
            path.unlink(missing_ok=True)
    model = abinet_main.build_model(config)
    return {'steps': steps, 'config': str(config_path), 'workdir': str(workdir), 'checkpoint': str(checkpoints[steps]),
            'parameters': sum(p.numel() for p in model.parameters()), 'wall_seconds': wall,
            'eval_seconds': evals, 'train_seconds': train_seconds, 'seconds_per_step': train_seconds / steps,
            'images_per_second': config.dataset_train_batch_size * steps / max(train_seconds, 1e-9),
            'test_seconds': eval_wall, 'final': final, 'curve': curve,
            'history': [dict(h) for h in callback.history], 'train_history': [dict(h) for h in callback.train_history]}


# ---------------------------------------------------------------- report


def summarise(runs: dict[int, dict[str, dict]], pair: tuple[str, str], sets: Sequence[str]) -> dict[str, Any]:
    """Mean and spread over seeds of cwr/ccr for each (model, set) of a comparison, and the IV - OOV gaps."""
    table: dict[str, Any] = {}
    for run in pair:
        per_seed = [r[run] for r in runs.values() if run in r]
        entry: dict[str, Any] = {'seeds': len(per_seed), 'steps': [r['steps'] for r in per_seed], 'sets': {}}
        for name in sets:
            entry['sets'][name] = {}
            for metric in ('cwr', 'ccr'):
                values = [r['final'][name][metric] for r in per_seed]
                mean, sd = mean_spread(values)
                entry['sets'][name][metric] = {'mean': mean, 'sd': sd, 'values': values}
            entry['sets'][name]['samples'] = per_seed[0]['final'][name]['samples']
        for oov in ('oov_words', 'oov_random'):
            for metric in ('cwr', 'ccr'):
                values = [r['final']['iv'][metric] - r['final'][oov][metric] for r in per_seed]
                mean, sd = mean_spread(values)
                entry.setdefault('gaps', {}).setdefault(f'iv-{oov}', {})[metric] = {'mean': mean, 'sd': sd,
                                                                                    'values': values}
        table[run] = entry
    return table


def markdown_table(table: dict[str, Any], pair: tuple[str, str], sets: Sequence[str]) -> list[str]:
    """One comparison as markdown: a row per test set and per IV - OOV gap, cwr and ccr of both runs."""
    a, b = pair
    la, lb = RUN_LABELS[a], RUN_LABELS[b]

    def steps(run: str) -> str:
        values = sorted(set(table[run]['steps']))
        return '/'.join(map(str, values))

    def cell(stat: dict[str, Any], signed: bool = False) -> str:
        return fmt(stat['mean'], stat['sd'], signed=signed)

    def delta(x: dict[str, Any], y: dict[str, Any]) -> str:
        return fmt(*mean_spread([vy - vx for vx, vy in zip(x['values'], y['values'])]), signed=True)

    lines = [f'| test set | images | {la} cwr ({steps(a)} steps) | {lb} cwr ({steps(b)} steps) | cwr: ConCLR − ABINet '
             f'| {la} ccr | {lb} ccr |', '|---|---:|---:|---:|---:|---:|---:|']
    for name in sets:
        ca, cb = table[a]['sets'][name], table[b]['sets'][name]
        lines.append(f'| {SET_LABELS.get(name, name)} | {ca["samples"]} | {cell(ca["cwr"])} | {cell(cb["cwr"])} '
                     f'| {delta(ca["cwr"], cb["cwr"])} | {cell(ca["ccr"])} | {cell(cb["ccr"])} |')
    for oov in ('oov_words', 'oov_random'):
        ga, gb = table[a]['gaps'][f'iv-{oov}'], table[b]['gaps'][f'iv-{oov}']
        lines.append(f'| gap IV − {SET_LABELS[oov]} (points) | | {cell(ga["cwr"], True)} | {cell(gb["cwr"], True)} '
                     f'| {delta(ga["cwr"], gb["cwr"])} | {cell(ga["ccr"], True)} | {cell(gb["ccr"], True)} |')
    return lines


def plot_curves(runs: dict[int, dict[str, dict]], path: Path, wall_clock: bool = False) -> Path:
    """cwr on the IV / OOV curve subsets against steps (or training seconds): one panel per set, a line per
    run and seed."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    colours = {'abinet': 'tab:blue', 'conclr': 'tab:red', 'abinet_wall': 'tab:cyan'}
    fig, axes = plt.subplots(1, len(SYNTHETIC_SETS), figsize=(5.5 * len(SYNTHETIC_SETS), 4.2), squeeze=False)
    for ax, name in zip(axes[0], SYNTHETIC_SETS):
        top = 5.0
        for run in RUNS:
            labelled = False
            for seed, by_run in runs.items():
                if run not in by_run:
                    continue
                result = by_run[run]
                xs = [p['iteration'] * (result['seconds_per_step'] if wall_clock else 1) for p in result['curve']]
                ys = [100 * p[f'{name}_curve']['cwr'] for p in result['curve']]
                ax.plot(xs, ys, marker='o', ms=3, color=colours[run], alpha=0.85,
                        label=None if labelled else RUN_LABELS[run])
                labelled = True
                top = max(top, *ys)
        ax.set_ylim(-0.02 * top, min(100.0, 1.1 * top))  # lines at 0 stay visible above the axis
        ax.set_title(f'{SET_LABELS[name]} (curve subset)')
        ax.set_xlabel('training seconds (evaluation excluded)' if wall_clock else 'optimiser steps')
        ax.set_ylabel('word accuracy (cwr) %')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tsne_pair(runs: dict[str, dict], data: dict[str, Any], count: int, device: torch.device, output: Path
              ) -> list[str]:
    """t-SNE of the character glimpses of each run's final model on each OOV set, side by side (tools/tsne.py)."""
    from threadpoolctl import threadpool_limits

    from tools.tsne import plot_panels, tsne_points

    written = []
    for name in ('oov_words', 'oov_random'):
        panels, chars = [], None
        for run in RUNS:
            if run not in runs:
                continue
            config = Config(runs[run]['config'])
            config.model_checkpoint = runs[run]['checkpoint']
            charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
            chars = chars or charset.chars[1:]
            dataset = ImageDataset(data['sets'][name]['path'], charset, False, **dataset_kwargs(config, False))
            model = abinet_main.build_model(config).to(device).eval()
            # sklearn's OpenMP threads beyond torch's share of the cores made t-SNE 10x slower on a loaded machine
            with threadpool_limits(limits=torch.get_num_threads(), user_api='openmp'):
                points, labels = tsne_points(model, dataset, charset, count,
                                             case_sensitive=config.dataset_eval_case_sensitive, device=device)
            panels.append((f'{RUN_LABELS[run]}, {runs[run]["steps"]} steps', points, labels))
        path = plot_panels(panels, output / f'tsne_{name}.png', chars)
        written.append(path.name)
    return written


def environment(device: torch.device) -> dict[str, Any]:
    """Hardware and software of this run."""
    cpu_model = platform.processor()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu_model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    import fastai

    return {'cpu_count': os.cpu_count(), 'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
            else os.cpu_count(), 'cpu_model': cpu_model, 'torch_threads': torch.get_num_threads(),
            'device': str(device), 'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda'
            else cpu_model, 'torch': torch.__version__, 'fastai': fastai.__version__,
            'python': platform.python_version(), 'platform': platform.platform()}


def write_report(output: Path, result: dict[str, Any]) -> None:
    """results.json and results.md."""
    (output / 'results.json').write_text(json.dumps(result, indent=1, allow_nan=True))
    e, env, data = result['experiment'], result['environment'], result['data']
    sets = result['test_sets']
    lines = ['# Does ConCLR help out of vocabulary?', '',
             f'Preset `{result["preset"]}`; command `{result["command"]}`; seeds {e["seeds"]}.', '',
             f'Training vocabulary V: {e["vocab_size"]} English words of {e["min_len"]}-{e["max_len"]} letters, '
             f'{e["train_images"]} training renders. Test sets (same fonts and rendering): IV = '
             f'{e["test_images"]} new renders of V; OOV-words = {e["test_images"]} renders of '
             f'{e["oov_vocab_size"]} English words not in V; OOV-random = {e["test_images"]} renders of '
             f'{e["oov_vocab_size"]} random [a-z0-9] strings; both OOV vocabularies have V\'s length histogram.'
             + (f' Real sets: {", ".join(s for s in sets if s not in SYNTHETIC_SETS)}.'
                if len(sets) > len(SYNTHETIC_SETS) else ' No real benchmark sets.'), '',
             'cwr = word accuracy, ccr = character accuracy (case-insensitive, [0-9a-z]), in %, mean ± sample '
             'standard deviation over seeds (no spread with one seed); gaps are IV minus OOV in points. '
             '"ConCLR − ABINet" is the per-seed difference (positive: ConCLR reads more words; on a gap row, '
             'negative: ConCLR loses less out of vocabulary). Each run is evaluated at its final step (not at '
             'its best evaluation).', '']
    lines += ['## Same number of optimiser steps', '',
              'Both models: same seed, data, model size, learning-rate schedule and number of steps.', '']
    lines += markdown_table(result['tables']['same_steps'], ('abinet', 'conclr'), sets)
    if 'same_wall_clock' in result['tables']:
        lines += ['', '## Same wall-clock training time', '',
                  'ABINet-Vision trained for as many steps as fit in the ConCLR run\'s measured training time '
                  '(evaluation excluded), with its learning-rate schedule stretched to its own length. '
                  'Measured training seconds, mean over seeds: ConCLR-Vision '
                  f'{mean_spread([r["conclr"]["train_seconds"] for r in result["runs"].values()])[0]:.1f} s, '
                  'ABINet-Vision (equal wall-clock) '
                  f'{mean_spread([r["abinet_wall"]["train_seconds"] for r in result["runs"].values()])[0]:.1f} s.',
                  '']
        lines += markdown_table(result['tables']['same_wall_clock'], ('abinet_wall', 'conclr'), sets)
    lines += ['', '## Runs', '', '| run | seed | parameters | steps | training s | s/step | img/s | evaluation s '
              '| main.train wall s |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for seed, by_run in result['runs'].items():
        for run, r in by_run.items():
            lines.append(f'| {RUN_LABELS[run]} | {seed} | {r["parameters"]:,} | {r["steps"]} | '
                         f'{r["train_seconds"]:.1f} | {r["seconds_per_step"]:.3f} | {r["images_per_second"]:.1f} | '
                         f'{r["eval_seconds"] + r["test_seconds"]:.1f} | {r["wall_seconds"]:.1f} |')
    lines += ['', 'Training seconds are the sums of the logged speed windows (no evaluation, checkpoint saving or '
              'set-up); img/s counts original images (a ConCLR step also trains on two ConAug views of its batch); '
              'evaluation s = training-time evaluations plus the main.test runs behind the curves and tables.', '',
              '## Figures', '', '- learning curves (cwr on the curve subsets of '
              f'{e["curve_images"]} images per set) against steps: `curves_steps.png`; against training seconds: '
              '`curves_wallclock.png`']
    for name in result.get('tsne', []):
        lines.append(f'- t-SNE of character glimpses (first seed, {e["tsne_images"]} images): `{name}`')
    lines += ['', '## Environment', '',
              f'- device: {env["device"]} ({env["device_name"]}); CPUs: {env["cpus_usable"]} usable of '
              f'{env["cpu_count"]} ({env["cpu_model"]}); torch threads {env["torch_threads"]}',
              f'- torch {env["torch"]}, fastai {env["fastai"]}, Python {env["python"]}, {env["platform"]}',
              f'- wall time: data {data["seconds"]:.0f} s, total {result["wall_seconds"]:.0f} s; '
              f'per-run logs, TensorBoard events and configs under `runs/` and `configs/`']
    (output / 'results.md').write_text('\n'.join(lines) + '\n', encoding='utf-8')


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', required=True, help='experiment preset (configs/experiment_*.yaml)')
    parser.add_argument('--output', required=True, help='folder for data, runs and the report')
    parser.add_argument('--iters', type=int, default=None, help='override config.training.max_iters (steps of '
                        'the same-steps runs) for a short real run')
    parser.add_argument('--seeds', type=int, nargs='+', default=None, help='override experiment.seeds')
    parser.add_argument('--no_benchmarks', action='store_true', help='skip the real benchmark LMDBs')
    parser.add_argument('--cpu', action='store_true', help='run on the CPU even when a GPU is present')
    parser.add_argument('--overwrite', action='store_true', help='reuse a non-empty output folder: runs and '
                        'report are replaced, data kept when its settings match')
    return parser.parse_args(argv)


def prepare_output(output: Path, overwrite: bool) -> None:
    """Create the output folder; a non-empty one needs --overwrite (its runs, configs and report are removed)."""
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ExperimentError(f'{output} is not empty (pass --overwrite to replace its runs and report)')
        for sub in ('runs', 'configs'):
            shutil.rmtree(output / sub, ignore_errors=True)
        for pattern in ('results.*', '*.png', 'experiment.txt'):
            for path in output.glob(pattern):
                path.unlink()
    output.mkdir(parents=True, exist_ok=True)


def warm_up(model: torch.nn.Module, config: Config, device: torch.device) -> None:
    """One forward and backward pass on a dummy batch, so that one-time start-up costs (CUDA context, library
    handles, kernel selection) do not land in the first run's timed steps."""
    model = model.to(device).train()
    images = torch.zeros(2, 3, config.dataset_image_height, config.dataset_image_width, device=device)
    output = model(images)
    output = output[0] if isinstance(output, list) else output
    output['logits'].float().mean().backward()
    model.to('cpu')


def run_study(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """The whole study; returns what results.json holds."""
    started = time.perf_counter()
    experiment, shared, models = load_preset(args.preset)
    if args.seeds is not None:
        experiment['seeds'] = list(args.seeds)
        _check_experiment('--seeds', experiment)
    if args.no_benchmarks:
        experiment['benchmarks'] = False
    steps = args.iters if args.iters is not None else preset_value(shared, 'training.max_iters')
    if not isinstance(steps, int) or steps < 1:
        raise ExperimentError('the number of steps (config.training.max_iters or --iters) must be a positive integer')
    if experiment['torch_threads']:
        torch.set_num_threads(experiment['torch_threads'])
    output = Path(args.output).resolve()  # the run configs hold absolute paths: usable from any directory
    prepare_output(output, args.overwrite)
    device = torch.device('cuda' if torch.cuda.is_available() and not args.cpu else 'cpu')

    # Validate both project configs before spending time on data.
    batch = None
    try:
        for run in MODELS:
            path = run_config(shared, models[run], output / 'check', 0, run, steps, 1, 'train', ['test'],
                              experiment['decay_at'], experiment['curve_points'])
            config = Config(path)
            model = abinet_main.build_model(config)
            if abinet_main.is_conclr(model) != (run == 'conclr'):
                raise ExperimentError(f'models.{run}: model.name {config.model_name} is '
                                      f'{"" if abinet_main.is_conclr(model) else "not "}a ConCLR model')
            batch = config.dataset_train_batch_size
            if config.global_malloc_tune:  # as main.py does; before any training, for both models alike
                tune_malloc()
            warm_up(model, config, device)
    finally:
        shutil.rmtree(output / 'check', ignore_errors=True)
    iters_per_epoch = experiment['train_images'] // batch
    if iters_per_epoch < 1:
        raise ExperimentError(f'{experiment["train_images"]} training images are fewer than one batch ({batch})')

    say(output, f'preset {args.preset}, {steps} steps per run, seeds {experiment["seeds"]}, device {device}')
    data = build_data(experiment, output / 'data', output)
    bench_dir = Path(experiment['benchmark_dir'] or REPO_ROOT.parent / 'shared' / 'benchmarks')
    benchmarks = find_benchmarks(bench_dir) if experiment['benchmarks'] else []
    if experiment['benchmarks'] and not benchmarks:
        say(output, f'no benchmark LMDBs in {bench_dir}: synthetic test sets only')
    curve_roots = [data['sets'][f'{n}_curve']['path'] for n in SYNTHETIC_SETS]
    final_roots = [data['sets'][n]['path'] for n in SYNTHETIC_SETS] + [str(p) for p in benchmarks]
    test_sets = list(SYNTHETIC_SETS) + [p.name for p in benchmarks]
    train_root = data['sets']['train']['path']

    def one(seed: int, run: str, run_steps: int) -> dict[str, Any]:
        path = run_config(shared, models['conclr' if run == 'conclr' else 'abinet'], output, seed, run, run_steps,
                          iters_per_epoch, train_root, curve_roots, experiment['decay_at'],
                          experiment['curve_points'])
        say(output, f'seed {seed}: training {RUN_LABELS[run]} for {run_steps} steps ({path})')
        return train_run(path, run_steps, device, curve_roots, final_roots, experiment, output)

    runs: dict[int, dict[str, dict]] = {}
    for seed in experiment['seeds']:
        by_run = runs.setdefault(seed, {})
        for run in MODELS:
            by_run[run] = one(seed, run, steps)
        if experiment['equal_wall_clock']:
            a, c = by_run['abinet'], by_run['conclr']
            wall_steps = equal_wall_steps(steps, c['train_seconds'], a['train_seconds'])
            say(output, f'seed {seed}: ConCLR trained {c["train_seconds"]:.1f} s; ABINet-Vision at '
                        f'{a["seconds_per_step"]:.3f} s/step gets {wall_steps} steps')
            by_run['abinet_wall'] = one(seed, 'abinet_wall', wall_steps)

    tables = {'same_steps': summarise(runs, ('abinet', 'conclr'), test_sets)}
    if experiment['equal_wall_clock']:
        tables['same_wall_clock'] = summarise(runs, ('abinet_wall', 'conclr'), test_sets)
    plot_curves(runs, output / 'curves_steps.png')
    plot_curves(runs, output / 'curves_wallclock.png', wall_clock=True)
    tsne = []
    if experiment['tsne_images'] > 0:
        start = time.perf_counter()
        tsne = tsne_pair(runs[experiment['seeds'][0]], data, experiment['tsne_images'], device, output)
        say(output, f't-SNE pair in {time.perf_counter() - start:.1f} s')
    result = {'preset': str(args.preset), 'command': ' '.join(['python', 'tools/ood_experiment.py', *argv]),
              'experiment': experiment, 'steps': steps, 'environment': environment(device), 'data': data,
              'test_sets': test_sets, 'runs': runs, 'tables': tables, 'tsne': tsne,
              'wall_seconds': time.perf_counter() - started}
    write_report(output, result)
    say(output, f'wrote {output / "results.md"} and {output / "results.json"} '
                f'({result["wall_seconds"]:.0f} s in all)')
    return result


def preset_value(tree: dict, dotted: str) -> Any:
    """The value of a dotted key in the preset's config, or the template's default."""
    node: Any = tree
    for key in dotted.split('.'):
        if not isinstance(node, dict) or key not in node:
            return getattr(Config(), dotted.replace('.', '_'))
        node = node[key]
    return node


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one `error:` line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        run_study(args, argv)
    except (ExperimentError, ConfigError, DatasetError, CheckpointError, FileNotFoundError, yaml.YAMLError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
