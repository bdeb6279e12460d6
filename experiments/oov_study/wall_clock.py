"""The equal-wall-clock baseline's length: the baseline's and the reference arm's training steps timed side by side.

Two runs' own training seconds may come from different machines or machine loads, and on a shared VM the same step
drifts by a quarter within one run, so their ratio would mix machine speed into the comparison. Here both models'
steps are timed in one process, in alternating rounds, just before the baseline's equal-wall-clock run trains; the
ratio of their medians gives its steps. The measurement is saved in <output>/wall_clock.json, so a resumed study
reuses it and the run keeps its spec.
"""

from __future__ import annotations

import json
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from configuration import Config
from runtime.atomic_file import write_json_atomically
from tools.benchmark.batches import make_batch
from tools.benchmark.learner import bench_learner, learner_fit
from tools.benchmark.timing import alternating_rounds
from training.builders import build_model
from utils import CharsetMapper

WALL_FILE = 'wall_clock.json'


def measure_step_seconds(configs: dict[str, Path], device: torch.device, rounds: int = 4,
                         steps: int = 3) -> dict[str, float]:
    """Median seconds of one training step of each config's model, through a fastai Learner with training's
    callbacks (ConAug for ConCLR) on an in-memory batch of the config's batch size, timed in `rounds` alternating
    rounds of `steps` steps after one untimed step each."""
    fits = {}
    for name, path in configs.items():
        config = Config(path)
        torch.manual_seed(0)
        model = build_model(config)
        charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
        batch = make_batch(config.dataset_train_batch_size, charset, config.dataset_image_height,
                           config.dataset_image_width, device)
        learn, callbacks, timer = bench_learner(config, model, batch, device)
        learner_fit(learn, callbacks, timer, config.optimizer_lr, 1)
        fits[name] = (learn, callbacks, timer, config.optimizer_lr)
    times = alternating_rounds({name: partial(learner_fit, *fit, steps) for name, fit in fits.items()}, rounds)
    return {name: statistics.median(t) for name, t in times.items()}


def saved_times(output: Path) -> dict[str, Any]:
    """Every side-by-side measurement saved in `output`, by key ({} when none is)."""
    path = output / WALL_FILE
    return json.loads(path.read_text(encoding='utf-8')) if path.is_file() else {}


def measure_and_save(output: Path, key: str, reference: Path, baseline: Path, device: torch.device,
                     machine: str) -> dict[str, Any]:
    """Measure the two configs' step times side by side and save them under `key` in `output`:
    {'reference': s, 'baseline': s, 'measured': date, 'machine': `machine`}."""
    medians = measure_step_seconds({'reference': reference, 'baseline': baseline}, device)
    saved = saved_times(output)
    saved[key] = {**medians, 'measured': time.strftime('%Y-%m-%d %H:%M'), 'machine': machine}
    write_json_atomically(output / WALL_FILE, saved)
    return saved[key]
