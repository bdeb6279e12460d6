"""EncoderLayer against torch's nn.TransformerEncoderLayer on the same weights."""

import pytest
import torch
from torch import nn

import modules.encoder_layer as encoder_layer
from modules.encoder_layer import EncoderLayer, self_attention
from modules.fast_dropout import FastDropout

S, N, E, H = 12, 3, 16, 4


def pair(dropout: float) -> tuple[EncoderLayer, nn.TransformerEncoderLayer]:
    torch.manual_seed(0)
    ours = EncoderLayer(E, H, 32, dropout, 'relu')
    reference = nn.TransformerEncoderLayer(E, H, 32, dropout, 'relu')
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def test_same_checkpoint_keys_and_fast_dropout_modules():
    ours, reference = pair(0.1)
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert all(isinstance(m, FastDropout) for m in (ours.dropout, ours.dropout1, ours.dropout2))
    plain = EncoderLayer(E, H, 32, 0.1, 'relu', fast_dropout=False)
    assert type(plain.dropout) is nn.Dropout


@pytest.mark.parametrize('train', [True, False])
def test_outputs_and_gradients_equal_torch_without_dropout(train):
    ours, reference = pair(0.0)
    ours.train(train), reference.train(train)
    x = torch.randn(S, N, E, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out, ref = ours(x), reference(x2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if train:
        out.square().sum().backward(), ref.square().sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
        for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_self_attention_equals_multihead_attention():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(E, H)
    x = torch.randn(S, N, E)
    ours = self_attention(x, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj, H, 0.0, True)
    torch.testing.assert_close(ours, mha(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)


def test_training_drops_attention_weights_with_fast_dropout(monkeypatch):
    ours, _ = pair(0.1)
    seen = []

    def recording(x, p, training=True):
        seen.append((tuple(x.shape), p, training))
        return x

    monkeypatch.setattr(encoder_layer, 'fast_dropout', recording)
    ours.train()(torch.randn(S, N, E))
    assert seen == [((N * H, S, S), 0.1, True)]
