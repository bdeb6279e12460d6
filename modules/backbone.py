"""ABINet-Vision backbone: ResNet45 followed by a post-norm transformer encoder over the 2-D feature map."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from modules.encoder_layer import EncoderLayer
from modules.fast_dropout import FastDropout
from modules.memory_format import dense_like
from modules.positional_encoding import PositionalEncoding
from modules.resnet import ResNet45


class ResTransformer(nn.Module):
    """ResNet45 -> flatten row-major -> positional encoding -> `num_layers` encoder layers -> N x E x H x W.

    `fast_dropout` (model.vision.fast_dropout) computes the encoder's dropouts with modules/fast_dropout.py on the CPU.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, d_inner: int = 2048, dropout: float = 0.1,
                 activation: str = 'relu', num_layers: int = 3, feature_size: tuple[int, int] = (8, 32),
                 resnet_widths: Sequence[int] = (32, 64, 128, 256, 512),
                 resnet_layers: Sequence[int] = (3, 4, 6, 6, 3), fast_dropout: bool = True):
        super().__init__()
        if resnet_widths[-1] != d_model:
            raise ValueError(f'model.vision.d_model ({d_model}) must equal the last ResNet width '
                             f'({resnet_widths[-1]})')
        self.d_model = d_model
        self.resnet = ResNet45(resnet_widths, resnet_layers)
        self.pos_encoder = PositionalEncoding(d_model, dropout=dropout, max_len=feature_size[0] * feature_size[1])
        if fast_dropout:
            self.pos_encoder.dropout = FastDropout(dropout)
        layer = EncoderLayer(d_model, nhead, d_inner, dropout, activation, fast_dropout=fast_dropout)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.resnet(images)
        n, c, h, w = feature.shape
        seq = feature.flatten(2).permute(2, 0, 1).contiguous()  # (H*W, N, E), row-major positions
        seq = self.transformer(self.pos_encoder(seq))
        # Dense in the ResNet output's format: channels-last weights downstream (the attention's key encoder)
        # then get channels-last input, not an NCHW copy they would convert back.
        return dense_like(seq.permute(1, 2, 0).reshape(n, c, h, w), feature)
