"""Timing helpers shared by the benchmark and other timed comparisons: device sync, repeated calls, interleaved
medians, autocast and freeing device memory between measurements."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Any, Callable

import torch


def sync_device(device: torch.device) -> None:
    """Wait for the queued CUDA work on `device` (nothing to wait for on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def call_times(fn: Callable[[], Any], calls: int, device: torch.device) -> list[float]:
    """Wall time of each of `calls` calls of `fn` (device synchronised)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        sync_device(device)
        times.append(time.perf_counter() - start)
    return times


def alternating_rounds(timers: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Each timer's step times over `rounds` rounds, the order of the timers reversed every other round, so that a
    drift in the machine's load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in timers}
    for round_ in range(max(1, rounds)):
        for name in (list(timers) if round_ % 2 == 0 else list(timers)[::-1]):
            times[name] += timers[name]()
    return times


def median_time(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of `fn` over `repeats` calls after `warmup` untimed calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync_device(device)
    return statistics.median(call_times(fn, max(1, repeats), device))


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device,
                        repeats_of: dict[str, int] | None = None) -> dict[str, float]:
    """Median wall time of each function, timed in alternation (round k runs each once) so that a change in the
    machine's load hits all of them alike; `repeats_of` lowers the count for slow ones."""
    counts = {k: max(1, (repeats_of or {}).get(k, repeats)) for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync_device(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for round_ in range(max(counts.values())):
        for key, fn in fns.items():
            if round_ < counts[key]:
                start = time.perf_counter()
                fn()
                sync_device(device)
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for 'bf16' / 'fp16', a no-op for 'amp_off'."""
    if precision == 'amp_off':
        return contextlib.nullcontext()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def free_device_memory(device: torch.device) -> None:
    """Drop freed tensors and hand the allocator's cache back (between model line-ups)."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
