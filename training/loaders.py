"""The training and evaluation DataLoaders (this process's share of them in a distributed run)."""

from __future__ import annotations

import os
import random

import cv2
import numpy as np
import torch
from fastai.basic_data import DeviceDataLoader
from torch.utils.data import DataLoader, Dataset

from configuration import Config
from runtime.distributed import ResumableDistributedSampler, ShardedBatchSampler, current_env, process_rank
from runtime.stop_signal import ignore_stop_signals

MAX_AUTO_WORKERS = 16  # the most loader workers per process that `dataset.num_workers: null` starts


def limit_opencv_threads() -> None:
    """One OpenCV thread in this process and in the DataLoader workers it forks (they inherit the setting).

    OpenCV's own thread pool fights the training threads (and the other workers) for the cores of small machines.
    Call it in the main process before creating worker processes: a forked worker must not call
    cv2.setNumThreads itself, because reconfiguring a thread pool its parent had started hangs (the copied pool
    waits in pthread_cond_destroy for threads that do not exist in the child).
    """
    cv2.setNumThreads(1)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed Python, NumPy and torch distinctly per worker and per rank (pair it with
    `limit_opencv_threads` in the parent for one OpenCV thread per worker).

    torch gives worker k the seed base_seed + k, with base_seed drawn in the main process: processes of a
    distributed run that share a seed draw the same base_seed, so the rank is mixed in here. The worker also leaves
    SIGINT / SIGTERM to the main process (stop_signal.ignore_stop_signals), which then stops training cleanly.
    """
    seq = np.random.SeedSequence([torch.initial_seed(), process_rank(), worker_id])
    low, high = (int(v) for v in seq.generate_state(2, np.uint32))
    seed = (high << 32 | low) & (2**63 - 1)
    random.seed(seed)
    np.random.seed(low)
    torch.manual_seed(seed)
    ignore_stop_signals()


def shutdown_workers(loader: DataLoader) -> None:
    """Stop a DataLoader's persistent worker processes now; otherwise they live as long as the loader object."""
    iterator = getattr(loader, '_iterator', None)  # torch keeps the persistent workers' iterator here
    if iterator is not None and hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()
    loader._iterator = None


def worker_count(config: Config) -> int:
    """`dataset.num_workers` per process; null = the CPUs this process may use, shared by the processes on this
    machine (LOCAL_WORLD_SIZE), less one for the process itself: at least 1, at most MAX_AUTO_WORKERS."""
    if config.dataset_num_workers is not None:
        return config.dataset_num_workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    per_process = cpus // max(int(os.environ.get('LOCAL_WORLD_SIZE', '1')), 1)
    return min(max(per_process - 1, 1), MAX_AUTO_WORKERS)


def eval_dataloader(config: Config, dataset: Dataset, device: torch.device, persistent: bool = False) -> DataLoader:
    """Fixed-order evaluation batches of `dataset.test.batch_size`; in a distributed run this process's share
    (batches dealt round-robin, see ShardedBatchSampler). `persistent` keeps the workers between passes (the
    evaluations during training; shut them down with shutdown_workers)."""
    env = current_env(device)
    limit_opencv_threads()  # before any worker is forked
    batches = ShardedBatchSampler(len(dataset), config.dataset_test_batch_size, env.rank, env.world_size)
    workers = worker_count(config)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                      pin_memory=config.dataset_pin_memory and device.type == 'cuda', worker_init_fn=seed_worker,
                      persistent_workers=persistent and workers > 0)


def test_loader(config: Config, dataset: Dataset, device: torch.device) -> DeviceDataLoader:
    """Fixed-order evaluation loader (this process's share of it in a distributed run)."""
    return DeviceDataLoader(eval_dataloader(config, dataset, device), device)


def loader_seed(sampler_seed: int, rank: int, iteration: int) -> int:
    """Seed of the training loader's own generator (worker base seeds), distinct per rank and per (re)start."""
    return (sampler_seed * 1_000_003 + rank * 7_919 + iteration) % 2**63


def train_dataloader(config: Config, dataset: Dataset, sampler: ResumableDistributedSampler, batch: int,
                     device: torch.device, seed: int) -> DataLoader:
    """Shuffled training batches of this process's `batch` from `sampler`, workers seeded from `seed`."""
    workers = worker_count(config)
    limit_opencv_threads()  # before any worker is forked
    return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                      pin_memory=config.dataset_pin_memory and device.type == 'cuda',
                      persistent_workers=workers > 0, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(seed))
