"""How much device memory one training process needs, measured before the first step, and advice when it will not fit.

The estimate adds up, per process: the float32 weights, their gradients and Adam's two moments (4 + 4 + 8 bytes per
parameter), and the activations: the bytes of the tensors autograd saves for the backward pass
(`torch.autograd.graph.saved_tensors_hooks`), measured on a copy of the model over 2 and 4 images on the training
device (every view of ConCLR's included, under the run's autocast) and scaled linearly to the micro-batch, plus
`TRANSIENT` for what a step holds beside them (temporaries, the allocator's rounding) and a fixed `RESERVE` (cuDNN
workspaces, the CUDA context's share). It is compared with the memory the process can use
(`torch.cuda.mem_get_info`'s free memory plus what torch already holds on the GPU; on the CPU MemAvailable shared
by the processes of the node). It is an estimate: the line says so.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from configuration import ConfigError

GIB = 2 ** 30
TRANSIENT = 0.25  # activations x (1 + this): what a step holds beside the saved tensors
RESERVE = 0.75 * GIB  # cuDNN workspaces, the CUDA context's share, NCCL buffers
BYTES_PER_PARAMETER = {'weights': 4, 'gradients': 4, 'adam': 8}


class MemoryEstimateError(ConfigError):
    """Training would not fit (or did not fit) in the device's memory: one line with the estimate and advice."""


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory one process needs for one training step of `micro_batch` images."""

    parameters: int  # number of parameters
    per_image: float  # bytes of saved activations per original image (all of its views)
    fixed: float  # bytes of saved activations that do not grow with the batch
    micro_batch: int
    amp: str | None

    @property
    def state_bytes(self) -> float:
        """Weights, gradients and Adam state."""
        return self.parameters * sum(BYTES_PER_PARAMETER.values())

    @property
    def activation_bytes(self) -> float:
        """Saved activations of one micro-batch with the transient margin."""
        return (self.fixed + self.per_image * self.micro_batch) * (1 + TRANSIENT)

    @property
    def total(self) -> float:
        """Everything, with the fixed reserve."""
        return self.state_bytes + self.activation_bytes + RESERVE

    def with_batch(self, micro_batch: int) -> MemoryEstimate:
        """The same model at another micro-batch."""
        return replace(self, micro_batch=micro_batch)

    def line(self, free: float | None, device: torch.device | str) -> str:
        """'memory estimate per process: ... = 12.3 GiB of 79.1 GiB free on cuda:0'."""
        where = f' of {free / GIB:.1f} GiB free on {device}' if free is not None else f' on {device}'
        return (f'memory estimate per process: weights + gradients + Adam {self.state_bytes / GIB:.2f} GiB, '
                f'activations {self.micro_batch} images x {self.per_image / 2**20:.1f} MiB (+{TRANSIENT:.0%}) '
                f'{self.activation_bytes / GIB:.2f} GiB, reserve {RESERVE / GIB:.2f} GiB = '
                f'{self.total / GIB:.1f} GiB{where} (amp {self.amp or "off"})')


def saved_tensor_bytes(run: Callable[[], object], exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `run()` runs, those in `exclude`
    (data pointers of the parameters) left out."""
    seen: set[int] = set(exclude)
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total


def measure(model: nn.Module, image_shape: tuple[int, int, int], views: int, device: torch.device,
            amp_dtype: torch.dtype | None, micro_batch: int, amp: str | None, sizes: tuple[int, int] = (2, 4)
            ) -> MemoryEstimate:
    """The estimate for `micro_batch` images, from forward passes of a copy of `model` in training mode over
    `sizes` images (each fed as `views` inputs); the caller's random state and the model are left untouched."""
    probe = copy.deepcopy(model).to(device).train()
    exclude = {p.untyped_storage().data_ptr() for p in probe.parameters()}
    exclude |= {b.untyped_storage().data_ptr() for b in probe.buffers()}
    measured = []
    devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        for n in sizes:
            images = torch.randn(n, *image_shape, device=device)
            measured.append(saved_tensor_bytes(lambda x=images: _forward(probe, x, views, device, amp_dtype),
                                               exclude))
    per_image = max((measured[1] - measured[0]) / (sizes[1] - sizes[0]), 0.0)
    fixed = max(measured[0] - per_image * sizes[0], 0.0)
    return MemoryEstimate(sum(p.numel() for p in model.parameters()), per_image, fixed, micro_batch, amp)


def _forward(model: nn.Module, images: torch.Tensor, views: int, device: torch.device,
             amp_dtype: torch.dtype | None) -> object:
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(*([images] * views))


def free_memory(device: torch.device, local_processes: int = 1) -> float | None:
    """Bytes this process can still use: on a GPU its free memory plus what torch's caching allocator already
    holds here (the weights, the measurement's freed blocks), on the CPU MemAvailable over the node's processes
    (None when unknown)."""
    if device.type == 'cuda':
        return float(torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device))
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return float(line.split()[1]) * 1024 / max(local_processes, 1)
    except OSError:
        pass
    return None


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending."""
    return [k for k in range(1, n + 1) if n % k == 0]


def fitting_accumulation(estimate: MemoryEstimate, global_batch: int, processes: int, free: float) -> int | None:
    """The smallest `training.accumulate` whose micro-batch fits in `free` bytes (None when not even one image)."""
    for k in divisors(global_batch // processes):
        if estimate.with_batch(global_batch // (processes * k)).total <= free:
            return k
    return None


def advice(estimate: MemoryEstimate, global_batch: int, processes: int, accumulate: int, free: float,
           bf16_estimate: MemoryEstimate | None = None) -> str:
    """What to change so a step fits: the smallest accumulation that does, with bf16 too when it was off."""
    options = []
    k = fitting_accumulation(estimate, global_batch, processes, free)
    if k is not None and k != accumulate:
        options.append(f'training.accumulate {k} ({global_batch // (processes * k)} images per process)')
    if bf16_estimate is not None:
        kb = fitting_accumulation(bf16_estimate, global_batch, processes, free)
        if kb is not None:
            options.append('training.amp bf16' + (f' with training.accumulate {kb} '
                                                   f'({global_batch // (processes * kb)} images per process)'
                                                   if kb != 1 else ''))
    if not options:
        return 'not even one image per process fits: use a GPU with more memory or a smaller model'
    return 'it fits with ' + ' or '.join(options) + ' (or more processes: training.processes)'


def check_fits(estimate: MemoryEstimate, free: float | None, device: torch.device, global_batch: int,
               processes: int, accumulate: int, bf16_estimate: MemoryEstimate | None = None) -> str:
    """The estimate's log line; a MemoryEstimateError (one line, with advice) when it exceeds `free`."""
    line = estimate.line(free, device)
    if free is None or estimate.total <= free:
        return line
    raise MemoryEstimateError(
        f'training will not fit in memory: about {estimate.total / GIB:.1f} GiB per process needed, '
        f'{free / GIB:.1f} GiB free on {device}, with {estimate.micro_batch} images per process = '
        f'dataset.train.batch_size {global_batch} / (training.processes {processes} x training.accumulate '
        f'{accumulate}) and training.amp {estimate.amp or "off"}; ' + advice(
            estimate, global_batch, processes, accumulate, free, bf16_estimate))


def out_of_memory_line(estimate: MemoryEstimate | None, device: torch.device, global_batch: int, processes: int,
                       accumulate: int, amp: str | None, iteration: int) -> str:
    """The one line for an out-of-memory error during training: the batch per process, the keys that set it and
    the next accumulation that halves it (or more)."""
    per_process = global_batch // processes
    micro = per_process // accumulate
    larger = [k for k in divisors(per_process) if k > accumulate and per_process // k <= micro // 2]
    tips = [f'training.accumulate {larger[0]} ({per_process // larger[0]} images per process)'] if larger else []
    if amp is None:
        tips.append('training.amp bf16 (or auto)')
    estimated = f', estimated {estimate.total / GIB:.1f} GiB' if estimate is not None else ''
    return (f'out of memory on {device} at iteration {iteration} with {micro} images per process = '
            f'dataset.train.batch_size {global_batch} / (training.processes {processes} x training.accumulate '
            f'{accumulate}), training.amp {amp or "off"}{estimated}; '
            + ('try ' + ' or '.join(tips) if tips else 'not even one image per process fits: use a larger GPU'))


def local_processes() -> int:
    """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 when unset)."""
    return int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
