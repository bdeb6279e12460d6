"""loop_references: the plain loops are right on hand-made and analytic cases and equal the vectorised code."""

import math

import pytest
import torch
import torch.nn.functional as F

from callbacks.conaug import conaug, draw_conaug_params
from losses.contrastive import contrastive_loss
from tools.benchmark import checks
from tools.benchmark.loop_references import conaug_loop, contrastive_loss_loop


def onehot_batch(words, t_slots, num_classes):
    """N x T x C one-hot targets and lengths (chars + 1) of words given as lists of class indices."""
    y = torch.zeros(len(words), t_slots, num_classes)
    for i, w in enumerate(words):
        seq = list(w) + [0] * (t_slots - len(w))
        y[i, torch.arange(t_slots), torch.tensor(seq)] = 1.0
    return y, torch.tensor([len(w) + 1 for w in words])



def test_conaug_loop_hand_made():
    y, lengths = onehot_batch([[1, 2], [3], [4, 1, 2, 3]], t_slots=6, num_classes=5)
    x = torch.arange(3 * 3 * 2 * 4, dtype=torch.float32).view(3, 3, 2, 4)
    perm, left = torch.tensor([1, 2, 0]), torch.tensor([False, True, False])
    images, labels, out_lengths, valid = conaug_loop(x, y, lengths, perm, left)
    # sample 0: [0 | 1] = "ab" + "c"; sample 1: [2 | 1] = "dabc" + "c"; sample 2: [2 | 0] = "dabc" + "ab" (6 > 5)
    assert labels.argmax(-1).tolist() == [[1, 2, 3, 0, 0, 0], [4, 1, 2, 3, 3, 0], [4, 1, 2, 3, 1, 2]]
    assert out_lengths.tolist() == [4, 6, 6] and valid.tolist() == [True, True, False]
    # bilinear 2W -> W with align_corners=False is the mean of column pairs: [x0 | x1] -> columns 0.5, 2.5 of each
    expected = torch.cat([(x[0, ..., 0::2] + x[0, ..., 1::2]) / 2, (x[1, ..., 0::2] + x[1, ..., 1::2]) / 2], dim=-1)
    assert torch.allclose(images[0], expected)


@pytest.mark.parametrize('side', ['fixed', 'sample'])
def test_conaug_loop_equals_vectorised(side):
    gen = torch.Generator().manual_seed(5)
    n, t_slots, c = 12, 8, 6
    words = [torch.randint(1, c, (int(k),), generator=gen).tolist() for k in torch.randint(1, 6, (n,), generator=gen)]
    y, lengths = onehot_batch(words, t_slots, c)
    x = torch.randn(n, 3, 4, 10, generator=gen)
    perm1, left1, perm2, left2 = draw_conaug_params(n, side, generator=gen)
    valid = []
    for perm, left in ((perm1, left1), (perm2, left2)):
        vec = conaug(x, y, lengths, perm, left)
        ref = conaug_loop(x, y, lengths, perm, left)
        assert torch.allclose(vec[0], ref[0], atol=1e-6)
        for a, b in zip(vec[1:], ref[1:]):
            assert torch.equal(a, b)
        valid += ref[3].tolist()
    assert not all(valid)  # some pairs are overlong (more than 7 characters), so that case is compared too


def test_contrastive_loop_analytic():
    # view 1 "ab", view 2 "a": anchors are the two a's (b has no positive); s(a, a') = 1/tau, s(a, b) = 0
    tau = 2.0
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    z1 = torch.stack([e1, e2, e2]).unsqueeze(0)
    z2 = torch.stack([e1, e2, e2]).unsqueeze(0)
    labels1, labels2 = torch.tensor([[1, 2, 0]]), torch.tensor([[1, 0, 0]])
    l1, l2 = torch.tensor([3]), torch.tensor([2])
    expected = 2 * (math.log(math.exp(1 / tau) + 1) - 1 / tau)
    for fn in (contrastive_loss_loop, contrastive_loss):
        assert fn(z1, z2, labels1, labels2, l1, l2, tau=tau).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('include_eos', [False, True])
def test_contrastive_loop_equals_vectorised_value_and_gradient(include_eos):
    inputs = checks.contrastive_inputs(6, 10, 8, 7, torch.device('cpu'), seed=3, max_len=7)
    z1, z2 = inputs[0], inputs[1]
    assert not inputs[6].all()  # some pairs are overlong and must be left out by both
    vec = contrastive_loss(*inputs[:6], tau=0.7, include_eos=include_eos, valid=inputs[6])
    ref = contrastive_loss_loop(*inputs[:6], tau=0.7, include_eos=include_eos, valid=inputs[6])
    assert vec.item() == pytest.approx(ref.item(), rel=1e-4)
    for a, b in zip(torch.autograd.grad(vec, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_contrastive_loop_no_valid_pair_is_zero_with_gradient():
    z = F.normalize(torch.randn(2, 4, 3), dim=-1).requires_grad_(True)
    labels = torch.ones(2, 4, dtype=torch.long)
    loss = contrastive_loss_loop(z, z, labels, labels, torch.tensor([3, 3]), torch.tensor([3, 3]),
                                   valid=torch.tensor([False, False]))
    loss.backward()
    assert loss.item() == 0.0 and z.grad is not None
