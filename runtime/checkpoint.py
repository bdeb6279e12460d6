"""Checkpoint files: atomic saving, safe loading (weights_only), key-checked loading into a model, and resuming.

Resuming an interrupted training run: which checkpoint, where in the data to continue, and the random state.

Every checkpoint IterationCallback writes carries the position of the run: `iteration` (global counter),
`epoch` (absolute), `batch_in_epoch` (batches of that epoch already trained), `iters_per_epoch`, `world_size`,
`global_batch` and `sampler_seed`; and its state: model, optimiser (`opt`), `best_cwr`, `rng` (the random
generators of every rank) and `scaler` (the fp16 GradScaler). A resumed run with the same data, global batch and
number of processes continues exactly at the next batch of the interrupted one; otherwise it starts at the
next epoch boundary with the iteration counter kept.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from runtime.atomic_file import atomic_open
from utils import get_logger

# Keys a ConCLR checkpoint has beyond a plain ABINet-Vision model, and vice versa.
HEAD_PREFIX = 'projection_head.'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


def save_checkpoint(path: str | os.PathLike, model: nn.Module, opt: Any = None, **extra: Any) -> Path:
    """Write {'model', 'opt', **extra} to `path` atomically (a crash mid-save never leaves a broken file there),
    every tensor on the CPU (so any tool reads it on a machine without a GPU, no map_location needed)."""
    model = getattr(model, 'module', model)
    return write_atomically(path, to_cpu({'model': model.state_dict(),
                                          'opt': opt.state_dict() if opt is not None else None, **extra}))


def to_cpu(value: Any) -> Any:
    """`value` with every tensor inside dicts, lists and tuples copied to the CPU (CPU tensors stay as they are)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, '_fields'):  # a named tuple
        return type(value)(*(to_cpu(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def write_atomically(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save `state` to `path` through a temporary file and a rename, so `path` is never half written; a
    failed write (disk full, quota) is a one-line CheckpointError with the system's reason."""
    try:
        with atomic_open(path) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        reason = _write_failure(e, Path(path))
        if reason is None:
            raise
        raise CheckpointError(f'cannot save {path}: {reason} (an earlier file under that name is unchanged)') from None
    return Path(path)


def _write_failure(error: BaseException, path: Path) -> str | None:
    """The system's reason a write failed ('No space left on device'), from the error or what it wraps; None when
    the error is not about writing."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.strerror or os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, RuntimeError) and 'inline_container' in str(error):  # torch's writer lost the OSError
        try:
            full = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize < 1 << 20
        except OSError:
            full = False
        return os.strerror(errno.ENOSPC) if full else f'the write failed ({str(error).splitlines()[0][:200]})'
    return None


# Phrases of torch's weights-only unpickler when a file asks for a callable or class outside its allowlist.
_CODE_MARKERS = ('GLOBAL', 'reduce', 'new object')


def _unpickler_reason(message: str) -> str:
    """The line of torch's weights-only error that says what was refused, without its boilerplate."""
    lines = [line.strip() for line in re.sub(r'\x1b\[[0-9;]*m', '', message).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(('Unsupported', 'Trying to', 'Can only', 'WeightsUnpickler error:')) or 'GLOBAL' in line:
            return line[:300]
    return lines[0][:300] if lines else 'UnpicklingError'


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch could not read `path`: not a torch file at all (say what it looks like), or a damaged one."""
    with open(path, 'rb') as f:
        head = f.read(64)
    if not head:
        return f'{path} is empty, not a PyTorch checkpoint'
    if not head.startswith((b'PK\x03\x04', b'\x80')):  # torch's zip container or a (legacy) binary pickle
        try:
            text = head.decode('utf-8')
        except UnicodeDecodeError:
            return f'{path} is not a PyTorch checkpoint (it starts with the bytes {head[:8].hex(" ")})'
        if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
            return f'{path} is a text file, not a PyTorch checkpoint (it starts with {text[:40]!r})'
    return f'{path}: not a readable checkpoint, truncated or damaged ({type(error).__name__}: {error})'


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; refuse files that need pickle code execution."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        # torch raises UnpicklingError both for unsafe contents and for plain garbage: tell them apart
        reason = _unpickler_reason(str(e))
        if any(marker in reason for marker in _CODE_MARKERS):
            raise CheckpointError(f'{path}: refused, loading it would execute pickled code ({reason})') from None
        raise CheckpointError(_unreadable(path, pickle.UnpicklingError(reason))) from None
    except Exception as e:  # truncated or not a torch file at all
        raise CheckpointError(_unreadable(path, e)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{path}: expected a dict, got {type(state).__name__}')
    return state


def model_state(state: dict[str, Any], path: str | os.PathLike = 'checkpoint') -> dict[str, torch.Tensor]:
    """The vision state_dict inside a checkpoint: `model` entry (or a bare state_dict), `module.` and
    full-ABINet `vision.` prefixes removed."""
    weights = state.get('model', state)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f'{path}: no state_dict of tensors under "model"')
    weights = {k.removeprefix('module.'): v for k, v in weights.items()}
    if any(k.startswith('vision.') for k in weights):
        weights = {k.removeprefix('vision.'): v for k, v in weights.items() if k.startswith('vision.')}
    return weights


def _summarise(keys: Iterable[str], limit: int = 3) -> str:
    keys = sorted(keys)
    shown = ', '.join(keys[:limit])
    return shown + (f' ... (+{len(keys) - limit} more)' if len(keys) > limit else '')


CLASSIFIER_PREFIX = 'cls.'  # the linear classifier: its width is the charset's number of classes


def charset_classes(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(the checkpoint's classes, the model's) when the classifier's width is the only difference, else None."""
    differ = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    body = {k for k in weights if not k.startswith(HEAD_PREFIX)}
    if not differ or not all(k.startswith(CLASSIFIER_PREFIX) for k in differ) or \
            body != {k for k in own if not k.startswith(HEAD_PREFIX)}:
        return None
    key = CLASSIFIER_PREFIX + 'weight'
    return (weights[key].shape[0], own[key].shape[0]) if key in weights and key in own else None


def _misfit(path: str | os.PathLike, fitting: int, total: int, missing: list[str], unexpected: list[str],
            mismatched: list[str], classes: tuple[int, int] | None = None) -> str:
    """One line on how a checkpoint does not fit the model: counts, the first few keys, and what to do."""
    parts = [f'{name} {len(keys)} ({_summarise(keys)})' for name, keys in
             (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)) if keys]
    if classes is not None:
        hint = (f'only the classifier differs: charset of {classes[0]} classes vs {classes[1]} (the checkpoint\'s vs '
                'dataset.charset_path here): use the charset it was trained with')
    elif fitting:
        hint = 'this checkpoint was made with another model size: use the config it was trained with'
    else:
        hint = 'none of its tensors belongs to this model: is it a checkpoint of ABINet-Vision or this project?'
    return f'{path} does not fit the model ({fitting} of its {total} tensors fit); ' + '; '.join(parts) + f'; {hint}'


# The public ConCLR reproduction names the projection head's layers `projection_head.head.*`, this project
# `projection_head.proj.*`, with the same layer indices (0 and 2 of the MLP head; none for the linear head).
REPRODUCTION_HEAD_PREFIX = HEAD_PREFIX + 'head.'
OWN_HEAD_PREFIX = HEAD_PREFIX + 'proj.'


def map_reproduction_head(weights: dict[str, torch.Tensor], path: str | os.PathLike = 'checkpoint'
                          ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights with the reproduction's head keys renamed onto this project's head, and {new name: name in
    the file} of the renamed keys (this project's own checkpoints pass unchanged)."""
    renamed = {OWN_HEAD_PREFIX + k.removeprefix(REPRODUCTION_HEAD_PREFIX): k
               for k in weights if k.startswith(REPRODUCTION_HEAD_PREFIX)}
    clash = sorted(k for k in renamed if k in weights)
    if clash:
        raise CheckpointError(f'{path}: holds the projection head under both names, e.g. {clash[0]} and '
                              f'{renamed[clash[0]]}')
    if not renamed:
        return weights, {}
    new_name = {old: new for new, old in renamed.items()}
    return {new_name.get(k, k): v for k, v in weights.items()}, renamed


def optional_head_keys(own: Iterable[str], weights: Iterable[str], path: str | os.PathLike = 'checkpoint',
                       log: Callable[[str], None] | None = None) -> set[str]:
    """Head keys that may be missing or left over: a ConCLR checkpoint's head when the model has none (a plain
    ABINet-Vision model, for inference), or the model's head when the checkpoint has none (it starts fresh).
    When both have a head, every key of it must fit, like any other key."""
    log = log or get_logger().info
    model_head = {k for k in own if k.startswith(HEAD_PREFIX)}
    file_head = {k for k in weights if k.startswith(HEAD_PREFIX)}
    if file_head and not model_head:
        log(f'{path}: its ConCLR projection head ({len(file_head)} tensors) is left out: this model has none '
            '(ABINet-Vision, inference)')
        return file_head
    if model_head and not file_head:
        log(f'{path}: holds no ConCLR projection head: the model\'s head starts fresh')
        return model_head
    return set()


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load a checkpoint's vision weights into `model`; returns the whole checkpoint dict.

    The reproduction's head keys are mapped onto this project's head (see `map_reproduction_head`); the head may
    be absent on one side only (see `optional_head_keys`). With `strict`, any other missing, unexpected or
    shape-mismatched key is an error listing them (under its name in the file); without it, only matching keys
    are loaded, `log` (default: the project logger) gets how many were loaded, skipped and left at their initial
    values, and a checkpoint of which nothing fits is an error. `log` also gets one line per head translation.
    """
    log = log or get_logger().info
    state = load_checkpoint(path)
    weights, renamed = map_reproduction_head(model_state(state, path), path)
    target = getattr(model, 'module', model)
    own = target.state_dict()
    optional = optional_head_keys(own, weights, path, log)
    missing = [k for k in own if k not in weights and k not in optional]
    unexpected = [renamed.get(k, k) for k in weights if k not in own and k not in optional]
    mismatched = [f'{renamed.get(k, k)} {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in weights if k in own and weights[k].shape != own[k].shape]
    loadable = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}
    if (strict and (missing or unexpected or mismatched)) or not loadable:
        raise CheckpointError(_misfit(path, len(loadable), len(weights), missing, unexpected, mismatched,
                                      charset_classes(weights, own)))
    target.load_state_dict(loadable, strict=False)
    if renamed and any(k in loadable for k in renamed):
        log(f'{path}: the ConCLR reproduction\'s projection head {REPRODUCTION_HEAD_PREFIX}* loaded as '
            f'{OWN_HEAD_PREFIX}* ({len(renamed)} tensors)')
    if not strict:
        log(f'{path} loaded with strict loading off: {len(loadable)} of the model\'s {len(own)} tensors loaded, '
            f'{len(weights) - len(loadable)} of the checkpoint\'s {len(weights)} skipped (not in the model or '
            f'another shape), {len(own) - len(loadable)} left at their initial values')
    return state


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


def choose_checkpoint(given: str | None, configured: str | None, best: Path) -> tuple[str, str]:
    """The checkpoint a test run or the demo loads, and why (one log line): `given` (--checkpoint) first; else the
    run's best when it exists, even when `configured` (model.checkpoint, where fine-tuning started) is set; else
    `configured`. CheckpointError naming the best's path when there is none of them."""
    if given:
        return given, f'loading --checkpoint {given}'
    if best.is_file():
        why = (f'model.checkpoint {configured} is where this run started; ' if configured else '')
        return str(best), why + f'no --checkpoint given: loading the run\'s best checkpoint {best}'
    if configured:
        return configured, (f'no --checkpoint given and the run has no best checkpoint ({best}) yet: loading '
                            f'model.checkpoint {configured}')
    raise CheckpointError(f'no --checkpoint given and the run\'s best checkpoint {best} does not exist (train '
                          'first, or pass --checkpoint PATH)')


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (a released checkpoint's fingerprint, an export cache's key)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
