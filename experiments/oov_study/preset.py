"""A study preset: experiment settings, one shared project config and the ablation arms, checked before any work.

A preset is a YAML file with three parts:

  experiment:  the study's own settings (SETTINGS below); an unknown key is an error naming the closest known one.
  config:      an ordinary project config (configs/template.yaml keys) shared by every arm; its
               training.max_iters is the number of optimiser steps of every same-steps run.
  arms:        {name: {label, seeds, config}}: each arm's config section is merged over `config`.

The study owns the keys that tie runs to it (TOOL_KEYS, and optimizer.scheduler.periods when experiment.decay_at
is set); a preset that sets one of them is refused.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import yaml

from configuration import Config

# key: (default, kind, nullable, comment); kinds: int, float, bool, ints (list of int), str
SETTINGS: dict[str, tuple[Any, str, bool, str]] = {
    'vocab_size': (None, 'int', True, '|V| of the ablation; null = the sweep chooses it'),
    'sweep_vocab_sizes': ([], 'ints', False, '|V| values of the vocabulary sweep (baseline arm alone); [] = none'),
    'sweep_seeds': ([0], 'ints', False, 'seeds of the sweep runs'),
    'min_gap': (0.10, 'float', False, 'the sweep chooses the largest |V| whose IV - OOV-words cwr gap reaches this'),
    'min_iv': (0.30, 'float', False, '... and whose IV cwr reaches this'),
    'min_len': (3, 'int', False, 'shortest word (characters)'),
    'max_len': (12, 'int', False, 'longest word (characters)'),
    'train_images': (20000, 'int', False, 'training renders of V (the same number for every sweep size)'),
    'test_images': (1000, 'int', False, 'renders in each synthetic test set'),
    'oov_vocab_size': (1000, 'int', False, 'distinct strings each OOV set draws from'),
    'curve_images': (200, 'int', False, 'first images of each synthetic set used for the learning curves'),
    'curve_points': (5, 'int', False, 'evaluations (and checkpoints) per run; at most 5'),
    'data_seed': (0, 'int', False, 'seed of vocabularies and renders (the same data for every training seed)'),
    'render_workers': (2, 'int', False, 'processes rendering images'),
    'image_height': (32, 'int', False, 'rendered height in pixels (before the model resizes)'),
    'baseline': ('abinet', 'str', False, 'arm of the sweep and of the equal-wall-clock runs (not ConCLR)'),
    'reference': ('conclr', 'str', False, 'arm whose training time the equal-wall-clock runs get'),
    'equal_wall_clock': (True, 'bool', False, 'also train the baseline for the reference arm\'s training time'),
    'wall_clock_seeds': (None, 'ints', True, 'seeds of the equal-wall-clock runs; null = the reference arm\'s'),
    'decay_at': (0.8, 'float', True, 'lr *= scheduler.gamma after this fraction of each run; null = preset\'s'),
    'benchmarks': (True, 'bool', False, 'evaluate on the real LMDBs in benchmark_dir when present'),
    'benchmark_dir': (None, 'str', True, 'null = <repo>/../shared/benchmarks'),
    'tsne_images': (300, 'int', False, 'images of each OOV set in the t-SNE pair (first seed); 0 = none'),
    'keep_checkpoints': (False, 'bool', False, 'keep every periodic checkpoint (false: only the final one)'),
    'eval_workers': (None, 'int', True, 'DataLoader workers of the evaluations; null = dataset.num_workers'),
    'torch_threads': (None, 'int', True, 'torch.set_num_threads for the whole study; null = torch\'s default'),
}
MAX_CURVE_POINTS = 5  # IterationCallback keeps the last five periodic checkpoints (configs/template.yaml)
TOOL_KEYS = ('global_name', 'global_workdir', 'global_seed', 'global_phase', 'dataset_train_roots',
             'dataset_test_roots', 'training_epochs', 'training_eval_iters', 'training_save_iters',
             'training_start_iters', 'training_resume', 'training_max_iters', 'model_checkpoint')
ARM_KEYS = ('label', 'seeds', 'config')


class ExperimentError(ValueError):
    """A preset or an output folder the study cannot use."""


@dataclass(frozen=True)
class Arm:
    """One arm of the ablation: its label, its training seeds and its config section."""

    name: str
    label: str
    seeds: tuple[int, ...]
    config: dict


@dataclass(frozen=True)
class Preset:
    """A checked preset; `tree` is what it was read as (its fingerprint identifies a study folder)."""

    path: str
    experiment: dict[str, Any]
    config: dict
    arms: dict[str, Arm]
    steps: int

    @property
    def tree(self) -> dict[str, Any]:
        """Everything that defines the study's runs, as plain data."""
        return {'experiment': self.experiment, 'config': self.config, 'steps': self.steps,
                'arms': {a.name: {'label': a.label, 'seeds': list(a.seeds), 'config': a.config}
                         for a in self.arms.values()}}

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of `tree`."""
        return hashlib.sha256(json.dumps(self.tree, sort_keys=True).encode()).hexdigest()

    def definition_fingerprint(self) -> str:
        """sha256 of what defines each run (data, models, schedule), seed lists left out: see definition_fingerprint."""
        return definition_fingerprint(self.tree)

    def arm_tree(self, arm: str) -> dict:
        """The project config of an arm before the study's own keys: `config` with the arm's section merged in."""
        return deep_merge(self.config, self.arms[arm].config)


def definition_fingerprint(tree: dict[str, Any]) -> str:
    """sha256 of a preset tree (Preset.tree, or a study.json) without the arms' seed lists: two presets with the same
    one define the same run for every seed they share, so a study folder of one is reused by the other (its finished
    runs kept, the new seeds planned)."""
    arms = {name: {k: v for k, v in arm.items() if k != 'seeds'} for name, arm in tree.get('arms', {}).items()}
    kept = {'experiment': tree.get('experiment'), 'config': tree.get('config'), 'steps': tree.get('steps'),
            'arms': arms}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


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


def preset_value(tree: dict, dotted: str) -> Any:
    """The value of a dotted key in a project config tree, or the template's default."""
    node: Any = tree
    for key in dotted.split('.'):
        if not isinstance(node, dict) or key not in node:
            return getattr(Config(), dotted.replace('.', '_'))
        node = node[key]
    return node


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def checked_setting(where: str, key: str, value: Any) -> Any:
    """`value` when it has the kind SETTINGS gives `key`; ExperimentError naming the key otherwise."""
    default, kind, nullable, _ = SETTINGS[key]
    if value is None:
        if nullable:
            return None
        raise ExperimentError(f'{where}: experiment.{key} must not be null')
    ok = {'int': _is_int(value), 'bool': isinstance(value, bool), 'str': isinstance(value, str),
          'float': (_is_int(value) or isinstance(value, float)) and math.isfinite(value),
          'ints': isinstance(value, list) and all(map(_is_int, value))}[kind]
    if not ok:
        raise ExperimentError(f'{where}: experiment.{key} expects {kind} (like {default!r}), got {value!r}')
    return value


def _read_experiment(where: str, given: Any) -> dict[str, Any]:
    if not isinstance(given, dict):
        raise ExperimentError(f'{where}: experiment must be a mapping')
    experiment = {key: copy.deepcopy(spec[0]) for key, spec in SETTINGS.items()}
    for key, value in given.items():
        if key not in SETTINGS:
            close = difflib.get_close_matches(str(key), list(SETTINGS), n=1, cutoff=0.0)
            raise ExperimentError(f'{where}: unknown experiment key {key!r} (did you mean {close[0]!r}?)')
        experiment[key] = checked_setting(where, key, value)
    return experiment


def _read_arms(where: str, given: Any) -> dict[str, Arm]:
    if not isinstance(given, dict) or not given:
        raise ExperimentError(f'{where}: arms must be a non-empty mapping {{name: {{label, seeds, config}}}}')
    arms = {}
    for name, body in given.items():
        if not isinstance(body, dict) or set(body) - set(ARM_KEYS):
            raise ExperimentError(f'{where}: arms.{name} must be a mapping with only {list(ARM_KEYS)}')
        seeds = body.get('seeds', [0])
        if not isinstance(seeds, list) or not seeds or not all(map(_is_int, seeds)) or len(set(seeds)) != len(seeds):
            raise ExperimentError(f'{where}: arms.{name}.seeds must be a non-empty list of distinct integers')
        config = body.get('config') or {}
        if not isinstance(config, dict):
            raise ExperimentError(f'{where}: arms.{name}.config must be a mapping')
        arms[str(name)] = Arm(str(name), str(body.get('label', name)), tuple(seeds), config)
    return arms


def _check_owned_keys(where: str, experiment: dict, config: dict, arms: dict[str, Arm]) -> None:
    for source, tree in [('config', config)] + [(f'arms.{a.name}.config', a.config) for a in arms.values()]:
        keys = set(flat_keys(tree))
        owned = sorted(keys & set(TOOL_KEYS) - ({'training_max_iters'} if source == 'config' else set()))
        if owned:
            raise ExperimentError(f'{where}: {source} sets {owned}, which the study sets itself')
        if experiment['decay_at'] is not None and 'optimizer_scheduler_periods' in keys:
            raise ExperimentError(f'{where}: {source} sets optimizer.scheduler.periods, which experiment.decay_at '
                                  'replaces (set decay_at: null to keep your periods)')


def _check_experiment(where: str, e: dict[str, Any], arms: dict[str, Arm]) -> None:
    if not 1 <= e['curve_points'] <= MAX_CURVE_POINTS:
        raise ExperimentError(f'{where}: experiment.curve_points must be 1..{MAX_CURVE_POINTS} (training keeps '
                              'only the last five periodic checkpoints)')
    if not 1 <= e['min_len'] <= e['max_len']:
        raise ExperimentError(f'{where}: experiment needs 1 <= min_len <= max_len')
    if not 0 < e['curve_images'] <= e['test_images']:
        raise ExperimentError(f'{where}: experiment.curve_images must be 1..test_images')
    if e['decay_at'] is not None and not 0 < e['decay_at'] <= 1:
        raise ExperimentError(f'{where}: experiment.decay_at must be in (0, 1] or null')
    for key in ('train_images', 'test_images', 'oov_vocab_size', 'render_workers', 'image_height'):
        if e[key] < 1:
            raise ExperimentError(f'{where}: experiment.{key} must be positive')
    sizes = e['sweep_vocab_sizes'] + ([e['vocab_size']] if e['vocab_size'] is not None else [])
    if e['vocab_size'] is None and not e['sweep_vocab_sizes']:
        raise ExperimentError(f'{where}: experiment.vocab_size is null, so sweep_vocab_sizes must list sizes')
    if any(n < 1 for n in sizes) or len(set(e['sweep_vocab_sizes'])) != len(e['sweep_vocab_sizes']):
        raise ExperimentError(f'{where}: vocabulary sizes must be distinct positive integers, got {sizes}')
    if e['sweep_vocab_sizes'] and not e['sweep_seeds']:
        raise ExperimentError(f'{where}: experiment.sweep_seeds must list at least one seed')
    for key in ('baseline', 'reference'):
        if e[key] not in arms:
            raise ExperimentError(f'{where}: experiment.{key} {e[key]!r} is not an arm (arms: {sorted(arms)})')
    if e['baseline'] == e['reference']:
        raise ExperimentError(f'{where}: experiment.baseline and reference must be different arms')


def load_preset(path: str | os.PathLike, steps: int | None = None) -> Preset:
    """Read and check a preset; `steps` overrides config.training.max_iters. ExperimentError on any problem."""
    where = str(path)
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ExperimentError(f'{where}: top level must be a mapping with experiment, config and arms')
    unknown = set(data) - {'experiment', 'config', 'arms'}
    if unknown:
        raise ExperimentError(f'{where}: unknown part(s) {sorted(unknown)}; a preset has experiment, config, arms')
    experiment = _read_experiment(where, data.get('experiment') or {})
    config = data.get('config') or {}
    if not isinstance(config, dict):
        raise ExperimentError(f'{where}: config must be a mapping')
    arms = _read_arms(where, data.get('arms'))
    _check_owned_keys(where, experiment, config, arms)
    _check_experiment(where, experiment, arms)
    steps = steps if steps is not None else preset_value(config, 'training.max_iters')
    if not _is_int(steps) or steps < 1:
        raise ExperimentError(f'{where}: the number of steps (config.training.max_iters or --iters) must be a '
                              f'positive integer, got {steps!r}')
    return Preset(where, experiment, config, arms, steps)
