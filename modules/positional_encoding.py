"""Fixed sinusoidal positional encoding (sequence-first), stored as a persistent buffer."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoid_table(length: int, d_model: int) -> torch.Tensor:
    """length x d_model table: sin on even channels, cos on odd, base 10000."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table


class PositionalEncoding(nn.Module):
    """Adds the sinusoid table to a (S, N, E) sequence, then dropout; buffer `pe` is max_len x 1 x d_model."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.register_buffer('pe', sinusoid_table(max_len, d_model).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[:x.size(0)])
