"""PositionAttention and the simpler Attention decoder: shapes, layout, and plain references."""

import math

import pytest
import torch
from torch import nn

from modules.attention import Attention, PositionAttention

T, E, CH = 4, 16, 8


def test_position_attention_layout():
    model = PositionAttention(T, E, CH)
    for i, block in enumerate(model.k_encoder):
        conv, norm = block[0], block[1]
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and isinstance(block[2], nn.ReLU)
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is not None
        assert conv.stride == ((1, 2) if i == 0 else (2, 2))
        assert (conv.in_channels, conv.out_channels) == ((E, CH) if i == 0 else (CH, CH))
    for i, block in enumerate(model.k_decoder):
        assert isinstance(block[0], nn.Upsample) and block[0].mode == 'nearest'
        conv = block[1]
        assert isinstance(conv, nn.Conv2d) and isinstance(block[2], nn.BatchNorm2d) and isinstance(block[3], nn.ReLU)
        assert conv.stride == (1, 1) and conv.bias is not None
        assert (conv.in_channels, conv.out_channels) == ((CH, E) if i == 3 else (CH, CH))
    assert model.k_decoder[3][0].size == (8, 32)
    sd = model.state_dict()
    assert sd['pos_encoder.pe'].shape == (T, 1, E)
    assert sd['project.weight'].shape == (E, E)


@pytest.mark.parametrize('feature_size', [(8, 32), (16, 64)])
def test_position_attention_outputs(feature_size):
    torch.manual_seed(0)
    model = PositionAttention(T, E, CH, feature_size).eval()
    sizes = []
    hooks = [block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:])))
             for block in list(model.k_encoder) + list(model.k_decoder)]
    x = torch.randn(3, E, *feature_size)
    with torch.no_grad():
        vecs, scores = model(x)
    for h in hooks:
        h.remove()
    h, w = feature_size
    assert sizes == [(h, w // 2), (h // 2, w // 4), (h // 4, w // 8), (h // 8, w // 16),
                     (h // 4, w // 8), (h // 2, w // 4), (h, w // 2), (h, w)]
    assert vecs.shape == (3, T, E) and scores.shape == (3, T, h, w)
    assert (scores >= 0).all()
    torch.testing.assert_close(scores.sum((2, 3)), torch.ones(3, T))
    # values are the input features themselves, not the key-net output
    torch.testing.assert_close(vecs, scores.flatten(2) @ x.flatten(2).transpose(1, 2))


def test_position_attention_scale_and_queries():
    """Scores = softmax(project(pe) . k / sqrt(E)): a key map of zeros but for one position gives known scores."""
    torch.manual_seed(0)
    model = PositionAttention(T, E, CH).eval()
    key = torch.zeros(1, E, 8, 32)
    key[0, :, 2, 5] = torch.randn(E)
    # the key net still runs, but its output is replaced by `key`
    model.k_decoder[3].register_forward_hook(lambda m, i, o: key)
    with torch.no_grad():
        _, scores = model(torch.randn(1, E, 8, 32))
        pe = torch.zeros(T, E)
        pos = torch.arange(T, dtype=torch.float64)[:, None]
        angle = pos / 10000.0 ** (torch.arange(0, E, 2, dtype=torch.float64) / E)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(angle).float(), torch.cos(angle).float()
        q = pe @ model.project.weight.t() + model.project.bias
        logit = q @ key[0, :, 2, 5] / math.sqrt(E)  # (T,); every other position has logit 0
    peak = logit.exp() / (logit.exp() + 255)
    torch.testing.assert_close(scores[0, :, 2, 5], peak)
    torch.testing.assert_close(scores[0, :, 0, 0], 1 / (logit.exp() + 255))


def test_attention_variant_equals_loop_reference():
    torch.manual_seed(0)
    h, w = 2, 3
    model = Attention(T, E, n_feature=h * w).eval()
    x = torch.randn(2, E, h, w)
    with torch.no_grad():
        vecs, scores = model(x)
        emb = model.f0_embedding.weight  # (T, E): one embedding per reading position
        ref_scores = torch.zeros(2, T, h * w)
        for n in range(2):
            logits = torch.zeros(h * w, T)
            for s in range(h * w):
                v = x[n, :, s // w, s % w]
                # position s mixes the T reading-order embeddings with row s of w0
                t_s = sum(model.w0.weight[s, j] * emb[j] for j in range(T)) + model.w0.bias[s]
                hidden = torch.tanh(model.wv.weight @ v + model.wv.bias + t_s)
                logits[s] = model.we.weight @ hidden + model.we.bias
            ref_scores[n] = torch.softmax(logits, dim=0).t()  # softmax over the positions
        ref_vecs = ref_scores @ x.flatten(2).transpose(1, 2)
    assert scores.shape == (2, T, h, w) and vecs.shape == (2, T, E)
    torch.testing.assert_close(scores.flatten(2), ref_scores)
    torch.testing.assert_close(vecs, ref_vecs)
