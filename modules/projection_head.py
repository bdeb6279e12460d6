"""ConCLR projection head: glimpse vectors -> L2-normalised embeddings for the contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """`mlp` = Linear -> ReLU -> Linear, or `linear` = one Linear; output unit-norm over channels."""

    def __init__(self, in_channels: int = 512, out_channels: int = 128, head: str = 'mlp'):
        super().__init__()
        if head == 'mlp':
            self.proj = nn.Sequential(nn.Linear(in_channels, in_channels), nn.ReLU(inplace=True),
                                      nn.Linear(in_channels, out_channels))
        elif head == 'linear':
            self.proj = nn.Linear(in_channels, out_channels)
        else:
            raise ValueError(f"model.projection.head must be 'mlp' or 'linear', got {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=-1)
