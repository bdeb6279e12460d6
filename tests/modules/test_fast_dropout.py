"""fast_dropout against the analytic Bernoulli(1 - p) dropout it stands for."""

import math

import pytest
import torch

from modules.fast_dropout import LEVELS, FastDropout, drop_levels, fast_dropout, keep_mask


def test_drop_levels_round_p_to_a_multiple_of_1_over_65536():
    assert drop_levels(0.1) == 6554  # 6553.6 rounded
    assert drop_levels(0.0) == 0 and drop_levels(1.0) == LEVELS
    with pytest.raises(ValueError, match='1.5'):
        drop_levels(1.5)


@pytest.mark.parametrize('p', [0.1, 0.5, 0.9])
def test_keep_mask_is_bernoulli_in_every_lane(p):
    torch.manual_seed(0)
    n = 400_000
    keep = keep_mask((n,), p).float()
    q = 1 - drop_levels(p) / LEVELS
    # Each of the four 16-bit lanes of a random word (element index mod 4) must keep with probability q: a
    # generator that leaves a lane's sign bit fixed shows up here as a lane keeping all or none.
    lanes = keep.view(-1, 4).mean(0)
    sigma = math.sqrt(q * (1 - q) / (n / 4))
    assert torch.all((lanes - q).abs() < 5 * sigma), lanes
    pairs = (keep[0::2] * keep[1::2]).mean().item()  # independence of neighbours
    assert abs(pairs - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / (n / 2))


def test_keep_mask_follows_the_torch_seed_and_shape():
    torch.manual_seed(3)
    a = keep_mask((5, 7), 0.3)
    torch.manual_seed(3)
    b = keep_mask((5, 7), 0.3)
    assert a.shape == (5, 7) and a.dtype == torch.bool and torch.equal(a, b)


def test_fast_dropout_scales_kept_values_and_its_gradient_is_the_same_mask():
    torch.manual_seed(1)
    x = torch.full((200_000,), 2.0, requires_grad=True)
    y = fast_dropout(x, 0.25)
    scale = LEVELS / (LEVELS - drop_levels(0.25))
    kept = y != 0
    assert torch.allclose(y[kept], torch.tensor(2.0 * scale))
    assert abs(y.mean().item() - 2.0) < 0.02  # expectation unchanged (5 sigma ~ 0.017)
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * scale)


def test_fast_dropout_is_identity_in_eval_and_at_p0_and_zero_at_p1():
    x = torch.randn(10, 3)
    assert torch.equal(fast_dropout(x, 0.5, training=False), x)
    assert torch.equal(fast_dropout(x, 0.0), x)
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    module = FastDropout(0.5).eval()
    assert isinstance(module, torch.nn.Dropout) and torch.equal(module(x), x)
