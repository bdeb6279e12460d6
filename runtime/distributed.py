"""Distributed data parallel training through torch.distributed (gloo on CPU, NCCL on CUDA), launched by torchrun.

One process per device. torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; the process
group is initialised from them (`env://`). The config's training batch size is the global one, split evenly
over the processes. Training batches come from `ResumableDistributedSampler` (every process a disjoint shard of
one seeded permutation per epoch); evaluation batches are dealt round-robin by `ShardedBatchSampler`, so every
test image is counted exactly once and the gathered results equal a single-process evaluation.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from configuration import ConfigError
from utils import setup_logger


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among `world_size` processes, its local rank and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, TensorBoard events and checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether several processes take part (collectives are needed)."""
        return self.world_size > 1


def process_rank() -> int:
    """The distributed rank torchrun gives this process (0 when not distributed)."""
    return int(os.environ.get('RANK', 0))


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_env(device: torch.device | str | None = None) -> DistEnv:
    """The DistEnv of the running process group (or a single process on `device`)."""
    device = torch.device(device) if device is not None else torch.device('cpu')
    if not is_distributed():
        return DistEnv(device=device)
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get('LOCAL_RANK', 0)), device)


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another env:// launcher) started this process."""
    return 'WORLD_SIZE' in os.environ and 'RANK' in os.environ


def group_timeout(seconds: float | None) -> datetime.timedelta | None:
    """The process-group timeout of `global.dist_timeout` (None: torch's default); an error unless positive."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ConfigError(f'global.dist_timeout {seconds!r}: expected a positive number of seconds')
    return datetime.timedelta(seconds=seconds)


_CPU_GROUP: dict[str, Any] = {}


def create_cpu_group(timeout: datetime.timedelta | None, backend: str) -> Any:
    """Under NCCL, the gloo group for small CPU collectives (the stop agreement), made now, at setup, by every rank
    in the same order, with the run's `global.dist_timeout`; None under gloo (the default group serves)."""
    _CPU_GROUP.clear()
    if backend == 'gloo':
        return None
    extra = {'timeout': timeout} if timeout is not None else {}
    _CPU_GROUP['group'] = dist.new_group(backend='gloo', **extra)
    return _CPU_GROUP['group']


def cpu_group() -> Any:
    """The process group for small CPU collectives: the default one under gloo, else the gloo group of
    `create_cpu_group` (made on first use, with torch's default timeout, when setup did not make it)."""
    if dist.get_backend() == 'gloo':
        return None
    if 'group' not in _CPU_GROUP:
        _CPU_GROUP['group'] = dist.new_group(backend='gloo')
    return _CPU_GROUP['group']


def setup_distributed(stream: Any = None, timeout_s: float | None = None, backend: str | None = None) -> DistEnv:
    """Join the process group torchrun describes in the environment, or run as one process.

    With several processes: NCCL and `cuda:LOCAL_RANK` when CUDA is available, gloo and the CPU otherwise (one
    process on CUDA also takes `cuda:LOCAL_RANK`, LOCAL_RANK 0 when unset, and makes it the current device);
    a collective that waits longer than `timeout_s` seconds for the other processes fails (torch's default when
    None). `backend` (`global.dist_backend`) overrides the choice; gloo on CUDA lets several processes share the
    GPUs (process r takes cuda:(LOCAL_RANK mod GPUs)). A single process that sees several GPUs (main.py with
    `training.processes: 1`; otherwise it starts one process per GPU) uses one of them and prints one line saying
    how to use them all.
    """
    timeout = group_timeout(timeout_s)
    cuda = torch.cuda.is_available()
    backend = dist_backend(backend, cuda)
    if launched_by_torchrun() and int(os.environ['WORLD_SIZE']) > 1:
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        shared = backend == 'gloo' and cuda
        device = _local_gpu(local_rank % torch.cuda.device_count() if shared else local_rank) if cuda \
            else torch.device('cpu')
        if not dist.is_initialized():
            extra = {'timeout': timeout} if timeout is not None else {}
            dist.init_process_group(backend=backend, init_method='env://', **extra)
            create_cpu_group(timeout, backend)
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)
    if cuda:
        device = _local_gpu(int(os.environ.get('LOCAL_RANK', 0)))
        count = torch.cuda.device_count()
        if count > 1 and not launched_by_torchrun():
            print(f'warning: {count} GPUs are visible but this process uses only {device}; to use all of them set '
                  f'training.processes: null (or {count})', file=stream or sys.stderr)
        return DistEnv(device=device)
    return DistEnv()


def dist_backend(requested: str | None, cuda: bool) -> str:
    """`global.dist_backend`: 'nccl' or 'gloo'; null = NCCL with CUDA, gloo without; an error for NCCL without
    CUDA or an unknown name."""
    if requested is None:
        return 'nccl' if cuda else 'gloo'
    name = str(requested).strip().lower()
    if name not in ('nccl', 'gloo'):
        raise ConfigError(f'global.dist_backend {requested!r}: expected nccl, gloo or null')
    if name == 'nccl' and not cuda:
        raise ConfigError('global.dist_backend nccl needs CUDA GPUs; none is visible (use gloo or null)')
    return name


def _local_gpu(local_rank: int) -> torch.device:
    """`cuda:LOCAL_RANK`, made the current device (kernels, NCCL, cudnn and `.cuda()` calls then go there)."""
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f'LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible: '
                          'start at most one process per GPU on each machine')
    device = torch.device('cuda', local_rank)
    torch.cuda.set_device(device)
    return device


def cleanup_distributed(failed: bool = False) -> None:
    """Leave the process group (no-op when none was started).

    After a failure the group is aborted, not destroyed: destroying is collective with NCCL and would wait for
    the other processes, which may be blocked in a collective of their own; once this process has exited,
    torchrun stops them.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if not failed:
        # The ranks meet first: a rank destroying its group while a peer is still in its last collective or
        # writing its checkpoint can abort in gloo's teardown and turn a finished run into a failed exit status.
        dist.barrier(group=cpu_group())
    _CPU_GROUP.clear()
    abort = getattr(dist.distributed_c10d, '_abort_process_group', None)
    if failed and abort is not None:
        try:
            abort()
            return
        except (RuntimeError, NotImplementedError):  # a backend without abort: leave the group to the exit
            return
    dist.destroy_process_group()


def local_batch_size(global_batch: int, world_size: int, accumulate: int = 1) -> int:
    """The per-process share of the global batch, per micro-batch when `accumulate` > 1; an error when it does
    not split evenly."""
    if global_batch % (world_size * accumulate):
        extra = f' x training.accumulate {accumulate}' if accumulate > 1 else ''
        raise ConfigError(f'dataset.train.batch_size {global_batch} (the global batch) is not divisible by the '
                          f'{world_size} processes{extra}')
    return global_batch // (world_size * accumulate)


def setup_rank_logger(workdir: str | Path, phase: str, env: DistEnv, name: str = 'conclr') -> logging.Logger:
    """Rank 0: the project logger (stdout + `<workdir>/<phase>.txt`). Other ranks: warnings only, on stderr,
    tagged with their rank, never into the shared text log."""
    if env.is_main:
        return setup_logger(workdir, phase, name)
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f'[%(asctime)s %(levelname)s rank {env.rank}] %(message)s',
                                           datefmt='%Y-%m-%d %H:%M:%S'))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    return logger


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order ([obj] when not distributed)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_agree(flag: bool, device: torch.device) -> bool:
    """True only when `flag` is True on every rank."""
    if not is_distributed():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_true(flag: torch.Tensor) -> torch.Tensor:
    """`flag` (a bool tensor on this rank's device) AND-ed over the ranks, on the device: no host copy either way."""
    if not is_distributed():
        return flag
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value.bool()


def sum_tensor_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `tensor` over the ranks, on its device (itself when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over the ranks (float64)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def shared_seed(seed: int | None) -> int:
    """`seed`, or one random seed drawn by rank 0 and shared by every rank."""
    if seed is not None:
        return int(seed)
    return int(broadcast_object(secrets.randbits(31)))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or DataParallel) wrapper."""
    return getattr(model, 'module', model)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank."""
    if not is_distributed():
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, src=src)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle, set_epoch, equal shards without padding) that can skip the batches
    already trained in the epoch a run resumes in.

    Every epoch is one permutation drawn from `seed + epoch`, cut to a multiple of the number of processes;
    process r takes positions r, r + W, ... So a run that resumes in epoch `skip_epoch` after `skip_batches`
    batches of `batch_size` sees exactly the samples the interrupted run had left in that epoch. With `accumulate`
    k > 1 a "batch" here is one optimiser step of k loader batches of `batch_size` (the skip counts steps) and every
    epoch's shard is cut to a whole number of steps.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 batch_size: int = 1, shuffle: bool = True, accumulate: int = 1):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size, self.accumulate = batch_size, accumulate
        self.skip_epoch, self.skip_batches = -1, 0

    def resume_at(self, epoch: int, batches: int) -> None:
        """Skip the first `batches` batches of epoch `epoch` (only of that epoch)."""
        self.skip_epoch, self.skip_batches = epoch, batches

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch of this shard."""
        return self.num_samples // (self.batch_size * self.accumulate)

    def _skip(self) -> int:
        return self.skip_batches * self.batch_size * self.accumulate if self.epoch == self.skip_epoch else 0

    def _end(self) -> int:
        return self.num_samples if self.accumulate == 1 else self.steps_per_epoch * self.batch_size * self.accumulate

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self._skip():self._end()])

    def __len__(self) -> int:
        return max(self._end() - self._skip(), 0)


class ShardedBatchSampler(Sampler[list[int]]):
    """Fixed-order batches of `range(length)`; rank r gets batches r, r + W, r + 2W, ... (no padding, no
    duplicates). Batch k of rank r is batch r + k * W of a single-process run, so results can be re-interleaved."""

    def __init__(self, length: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.length, self.batch_size, self.rank, self.world_size = length, batch_size, rank, world_size

    def all_batches(self) -> list[list[int]]:
        """Every batch of the single-process order."""
        return [list(range(s, min(s + self.batch_size, self.length))) for s in range(0, self.length, self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.all_batches()[self.rank::self.world_size])

    def __len__(self) -> int:
        total = -(-self.length // self.batch_size)
        return len(range(self.rank, total, self.world_size))


def interleave(parts: list[list[Any]]) -> list[Any]:
    """Undo ShardedBatchSampler's round-robin dealing: parts[r][k] is global item r + k * len(parts)."""
    out = []
    for k in range(max((len(p) for p in parts), default=0)):
        out.extend(p[k] for p in parts if k < len(p))
    return out
