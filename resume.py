"""Resuming an interrupted training run: which checkpoint, where in the data to continue, and the random state.

Every checkpoint IterationCallback writes carries the position of the run: `iteration` (global counter),
`epoch` (absolute), `batch_in_epoch` (batches of that epoch already trained), `iters_per_epoch`, `world_size`,
`global_batch` and `sampler_seed`; and its state: model, optimiser (`opt`), `best_cwr`, `rng` (the random
generators of every rank) and `scaler` (the fp16 GradScaler). A resumed run with the same data, global batch and
number of processes continues exactly at the next batch of the interrupted one; otherwise it starts at the
next epoch boundary with the iteration counter kept.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from checkpoint import CheckpointError

PERIODIC = re.compile(r'^(?P<name>.+)_(?P<epoch>\d+)_(?P<iteration>\d+)\.pth$')


def periodic_checkpoints(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """The periodic checkpoints `<name>_<epoch>_<iteration>.pth` of a work directory, oldest iteration first."""
    found = []
    for path in Path(folder).glob('*.pth'):
        match = PERIODIC.match(path.name)
        if match and (name is None or match['name'] == name):
            found.append((int(match['iteration']), path))
    return [path for _, path in sorted(found)]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself when it is a file; for a work directory its newest periodic checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = periodic_checkpoints(path)
        if not found:
            raise CheckpointError(f'--resume {path}: no periodic checkpoint (<name>_<epoch>_<iteration>.pth) there')
        return found[-1]
    raise CheckpointError(f'--resume {path}: no such checkpoint file or work directory')


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: the global iteration, the epoch and the batches of it to skip."""

    iteration: int
    epoch: int
    skip_batches: int
    exact: bool  # continues at the very next batch of the interrupted run
    note: str


def resume_point(state: dict[str, Any], iters_per_epoch: int, world_size: int, global_batch: int) -> ResumePoint:
    """The ResumePoint of a checkpoint for a run with this layout (iterations per epoch, processes, batch)."""
    iteration = int(state.get('iteration', 0))
    epoch = int(state.get('epoch', 0))
    done = state.get('batch_in_epoch')
    same_layout = (state.get('iters_per_epoch') == iters_per_epoch and state.get('world_size') == world_size
                   and state.get('global_batch') == global_batch)
    if done is not None and same_layout:
        done = int(done)
        if done >= iters_per_epoch:
            return ResumePoint(iteration, epoch + 1, 0, True, f'epoch {epoch} was complete; starting epoch {epoch + 1}')
        return ResumePoint(iteration, epoch, done, True,
                           f'continuing epoch {epoch} after its first {done} of {iters_per_epoch} batches')
    why = ('the checkpoint does not record its place in the epoch' if done is None else
           'the number of processes, global batch or iterations per epoch changed')
    return ResumePoint(iteration, epoch + 1, 0, False, f'{why}: starting at the next epoch boundary (epoch '
                       f'{epoch + 1}); the rest of epoch {epoch} is not trained')


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and current CUDA device) random states, as weights-only types."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {'python': random.getstate(),
            'numpy': {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos), 'has_gauss': int(has_gauss),
                      'cached_gaussian': float(cached)},
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None}


def restore_rng(state: dict[str, Any]) -> None:
    """Set the random states `capture_rng` returned."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
