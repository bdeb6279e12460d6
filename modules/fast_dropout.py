"""Dropout with a cheaper mask on the CPU: 16 random bits per element instead of torch's per-element Bernoulli draw.

torch's CPU dropout draws one Bernoulli sample per element; it took 14 % of a full-size ABINet-Vision training step
on the 2-core machine (docs/performance.md). Here one 64-bit random word gives the keep decisions of four elements.
The drop probability is rounded to a multiple of 1/65536 (0.1 becomes 0.100006) and the kept values are scaled by
the inverse of the rounded keep probability, so the expectation is unchanged. On CUDA torch's fused dropout is
faster and is used as it is.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16  # one 16-bit lane per element


def drop_levels(p: float) -> int:
    """The number of the 65536 equally likely 16-bit values that drop an element: round(p * 65536)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f'dropout probability must be in [0, 1], got {p}')
    return round(p * LEVELS)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = 'cpu') -> torch.Tensor:
    """Boolean mask of `shape`: each element kept independently with probability 1 - drop_levels(p) / 65536."""
    n = math.prod(shape)
    # The full signed range: a plain random_() leaves each word's top bit 0, so every fourth lane would be biased.
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, 2 ** 63 - 1)
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes >= drop_levels(p) - LEVELS // 2  # the lanes are uniform on [-32768, 32767]


class _ScaledMask(torch.autograd.Function):
    """x * m with m = keep_mask / keep probability in x's dtype, saved for the backward pass (one multiplication
    each way; a bool mask would cost a second pass for the scale)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = LEVELS - drop_levels(p)
        scaled = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(LEVELS / keep)
        ctx.save_for_backward(scaled)
        return x * scaled

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        scaled, = ctx.saved_tensors
        return grad * scaled, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of `x` with `keep_mask` (CPU); F.dropout on other devices, in eval mode, or when p is 0 or
    rounds to 1."""
    if not training or p == 0.0 or x.device.type != 'cpu' or drop_levels(p) == LEVELS:
        return F.dropout(x, p, training)
    return _ScaledMask.apply(x, p)


class FastDropout(nn.Dropout):
    """nn.Dropout computed by `fast_dropout` (same module type, no parameters: checkpoints are unaffected)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)
