"""Attention decoders of ABINet-Vision: PositionAttention (default) and the simpler `attention` variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.positional_encoding import PositionalEncoding


def _encoder_block(in_c: int, out_c: int, stride: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_c, out_c, 3, stride, 1), nn.BatchNorm2d(out_c), nn.ReLU(True))


def _decoder_block(in_c: int, out_c: int, scale_factor: int | None = None,
                   size: tuple[int, int] | None = None) -> nn.Sequential:
    # Index 0 is the Upsample, so the conv is `.1` and the BN `.2` as in official checkpoints.
    return nn.Sequential(nn.Upsample(size=size, scale_factor=scale_factor, mode='nearest'),
                         nn.Conv2d(in_c, out_c, 3, 1, 1), nn.BatchNorm2d(out_c), nn.ReLU(True))


class PositionAttention(nn.Module):
    """Input-independent position queries attend over a U-Net key map of the encoder features."""

    def __init__(self, max_length: int, in_channels: int = 512, num_channels: int = 64,
                 feature_size: tuple[int, int] = (8, 32)):
        super().__init__()
        self.max_length = max_length
        self.k_encoder = nn.Sequential(
            _encoder_block(in_channels, num_channels, (1, 2)),
            _encoder_block(num_channels, num_channels, (2, 2)),
            _encoder_block(num_channels, num_channels, (2, 2)),
            _encoder_block(num_channels, num_channels, (2, 2)))
        self.k_decoder = nn.Sequential(
            _decoder_block(num_channels, num_channels, scale_factor=2),
            _decoder_block(num_channels, num_channels, scale_factor=2),
            _decoder_block(num_channels, num_channels, scale_factor=2),
            _decoder_block(num_channels, in_channels, size=feature_size))
        self.pos_encoder = PositionalEncoding(in_channels, dropout=0.0, max_len=max_length)
        self.project = nn.Linear(in_channels, in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: N x E x H x W -> (attn_vecs N x T x E, attn_scores N x T x H x W)."""
        n, e, h, w = x.shape
        skips = []
        k = x
        for block in self.k_encoder:
            k = block(k)
            skips.append(k)
        for i, block in enumerate(self.k_decoder[:-1]):
            k = block(k) + skips[-2 - i]
        k = self.k_decoder[-1](k)

        q = self.pos_encoder(x.new_zeros(self.max_length, n, e)).transpose(0, 1)  # (N, T, E)
        q = self.project(q)
        scores = torch.bmm(q, k.flatten(2)) / (e ** 0.5)  # (N, T, H*W)
        scores = torch.softmax(scores, dim=-1)
        v = x.flatten(2).transpose(1, 2)  # (N, H*W, E): the values are the features themselves
        attn_vecs = torch.bmm(scores, v)
        return attn_vecs, scores.view(n, -1, h, w)


class Attention(nn.Module):
    """ABINet's simpler `attention` decoder: additive attention with learned reading-order embeddings."""

    def __init__(self, max_length: int, in_channels: int = 512, n_feature: int = 256):
        super().__init__()
        self.max_length = max_length
        self.f0_embedding = nn.Embedding(max_length, in_channels)
        self.w0 = nn.Linear(max_length, n_feature)
        self.wv = nn.Linear(in_channels, in_channels)
        self.we = nn.Linear(in_channels, max_length)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: N x E x H x W (H*W == n_feature) -> (attn_vecs N x T x E, attn_scores N x T x H x W)."""
        n, e, h, w = x.shape
        v = x.flatten(2).transpose(1, 2)  # (N, H*W, E)
        order = self.f0_embedding.weight  # (T, E): one embedding per reading position
        t = self.w0(order.t()).t()  # (H*W, E)
        scores = self.we(torch.tanh(self.wv(v) + t.unsqueeze(0)))  # (N, H*W, T)
        scores = F.softmax(scores.transpose(1, 2), dim=-1)  # (N, T, H*W)
        return torch.bmm(scores, v), scores.reshape(n, -1, h, w)
