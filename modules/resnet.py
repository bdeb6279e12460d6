"""ResNet45, the CNN of ABINet-Vision (stride-4 feature map, no max-pool)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """1x1 conv -> BN -> ReLU -> 3x3 conv (carrying the stride) -> BN, plus shortcut, then ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet45(nn.Module):
    """ResNet45: 3x3 stem and five stages of basic blocks; 32x128 input -> (widths[-1]) x 8 x 32."""

    STRIDES = (2, 1, 2, 1, 1)

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256, 512), layers: Sequence[int] = (3, 4, 6, 6, 3)):
        super().__init__()
        if len(widths) != 5 or len(layers) != 5:
            raise ValueError(f'ResNet45 needs 5 stage widths and 5 block counts, got {list(widths)}, {list(layers)}')
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        for i, (width, blocks, stride) in enumerate(zip(widths, layers, self.STRIDES), 1):
            setattr(self, f'layer{i}', self._make_layer(width, blocks, stride))
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        # Unconditional (spec): the key layout then does not depend on the widths; the default widths and
        # strides would give every first block a projection shortcut anyway.
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, 6):
            x = getattr(self, f'layer{i}')(x)
        return x
