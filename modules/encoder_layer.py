"""The encoder layer of ABINet-Vision: torch's post-norm TransformerEncoderLayer with cheaper dropout on the CPU."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modules.fast_dropout import FastDropout, fast_dropout


def self_attention(x: torch.Tensor, in_proj_weight: torch.Tensor, in_proj_bias: torch.Tensor | None,
                   out_proj: nn.Linear, nhead: int, dropout_p: float, training: bool) -> torch.Tensor:
    """Multi-head self-attention of an S x N x E sequence as nn.MultiheadAttention computes it (no masks), with
    `fast_dropout` on the attention weights."""
    s, n, e = x.shape
    d = e // nhead
    q, k, v = (t.reshape(s, n * nhead, d).transpose(0, 1)
               for t in F.linear(x, in_proj_weight, in_proj_bias).chunk(3, dim=-1))
    weights = torch.softmax(torch.bmm(q * d ** -0.5, k.transpose(1, 2)), dim=-1)  # (N*h, S, S)
    out = torch.bmm(fast_dropout(weights, dropout_p, training), v)
    return out_proj(out.transpose(0, 1).reshape(s, n, e))


class EncoderLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer (same computation, parameters and checkpoint keys); with `fast_dropout` its four
    dropouts (attention weights, residuals, feed-forward) use modules/fast_dropout.py when training on the CPU."""

    def __init__(self, *args: Any, fast_dropout: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fast_dropout = fast_dropout
        if fast_dropout:
            self.dropout, self.dropout1, self.dropout2 = (FastDropout(m.p) for m in
                                                          (self.dropout, self.dropout1, self.dropout2))

    def _sa_block(self, x: torch.Tensor, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                  is_causal: bool = False) -> torch.Tensor:
        masked = attn_mask is not None or key_padding_mask is not None or is_causal
        if not self.fast_dropout or masked or not self.training or x.device.type != 'cpu':
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        attn = self.self_attn
        return self.dropout1(self_attention(x, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
                                            attn.num_heads, attn.dropout, True))
