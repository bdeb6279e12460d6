"""Contrastive loss: a per-anchor loop reference, analytic cases, invariances, masking, NaN safety, autocast."""

import math

import pytest
import torch
import torch.nn.functional as F

from losses.contrastive import ContrastiveLoss, contrastive_loss, onehot_to_index
from tools.benchmark.loop_references import contrastive_loss_loop


def random_case(seed, n, t_slots, e, num_classes=4, invalid_frac=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, t_slots, e, generator=g, dtype=torch.float64), dim=-1)
    z2 = F.normalize(torch.randn(n, t_slots, e, generator=g, dtype=torch.float64), dim=-1)
    labels1 = torch.randint(1, num_classes, (n, t_slots), generator=g)
    labels2 = torch.randint(1, num_classes, (n, t_slots), generator=g)
    lengths1 = torch.randint(1, t_slots + 1, (n,), generator=g)
    lengths2 = torch.randint(1, t_slots + 1, (n,), generator=g)
    for labels, lengths in ((labels1, lengths1), (labels2, lengths2)):  # end slot and padding are null (0)
        labels[torch.arange(t_slots).unsqueeze(0) >= (lengths - 1).unsqueeze(1)] = 0
    valid = torch.rand(n, generator=g) >= invalid_frac
    return z1.to(dtype), z2.to(dtype), labels1, labels2, lengths1, lengths2, valid


CASES = [  # seed, N, T, E, tau, invalid_frac
    (0, 1, 3, 4, 2.0, 0.0),
    (1, 4, 6, 8, 2.0, 0.0),
    (2, 5, 8, 16, 0.5, 0.3),
    (3, 8, 5, 3, 1.0, 0.5),
    (4, 3, 10, 32, 0.1, 0.0),
]


@pytest.mark.parametrize('include_eos', [False, True])
@pytest.mark.parametrize('seed,n,t_slots,e,tau,invalid_frac', CASES)
def test_matches_loop_reference_value_and_gradients(seed, n, t_slots, e, tau, invalid_frac, include_eos):
    z1, z2, labels1, labels2, lengths1, lengths2, valid = random_case(seed, n, t_slots, e, invalid_frac=invalid_frac)
    z1_ref = z1.clone().requires_grad_()
    z2_ref = z2.clone().requires_grad_()
    expected = contrastive_loss_loop(z1_ref, z2_ref, labels1, labels2, lengths1, lengths2, tau, include_eos, valid)
    expected.backward()

    z1f = z1.float().requires_grad_()
    z2f = z2.float().requires_grad_()
    got = contrastive_loss(z1f, z2f, labels1, labels2, lengths1, lengths2, tau=tau, include_eos=include_eos,
                           valid=valid)
    got.backward()
    assert got.dtype == torch.float32 and got.dim() == 0
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z1f.grad.double(), z1_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z2f.grad.double(), z2_ref.grad, rtol=1e-5, atol=1e-6)


def test_case_has_anchors_without_positives_and_is_nonzero():
    """Guard that the random cases exercise skipped anchors and real losses (else the comparison is vacuous)."""
    z1, z2, labels1, labels2, lengths1, lengths2, valid = random_case(4, 3, 10, 32, num_classes=8)
    got = contrastive_loss(z1.float(), z2.float(), labels1, labels2, lengths1, lengths2, valid=valid)
    expected = contrastive_loss_loop(z1, z2, labels1, labels2, lengths1, lengths2, 2.0, False, valid)
    assert got.item() > 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    counts = {}
    for i in range(3):
        for labels, lengths in ((labels1, lengths1), (labels2, lengths2)):
            for t in range(int(lengths[i]) - 1):
                counts[(i, int(labels[i, t]))] = counts.get((i, int(labels[i, t])), 0) + 1
    assert 1 in counts.values()  # some character appears once in its pair: an anchor with no positive


def test_analytic_identical_embeddings():
    """All four positions hold the same class and vector: each anchor's loss is log 3, the pair's 4 log 3."""
    z = F.normalize(torch.randn(1, 1, 5), dim=-1).expand(1, 3, 5).contiguous()
    labels = torch.tensor([[2, 2, 0]])
    lengths = torch.tensor([3])
    got = contrastive_loss(z, z.clone(), labels, labels.clone(), lengths, lengths.clone(), tau=2.0)
    assert got.item() == pytest.approx(4 * math.log(3), rel=1e-6)


def test_analytic_two_classes():
    """One 'a' per view plus one 'b' in view 1; only the two 'a' anchors count."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z1 = torch.stack([e1, e2, e1]).unsqueeze(0)       # a, b, end slot
    z2 = torch.stack([e1, e2, e2]).unsqueeze(0)       # a, end slot (vector ignored), padding
    labels1, labels2 = torch.tensor([[1, 2, 0]]), torch.tensor([[1, 0, 0]])
    lengths1, lengths2 = torch.tensor([3]), torch.tensor([2])
    tau = 0.5
    # anchor a (either view): positive a with s = 1/tau, negative b with s = 0
    per_anchor = -(1 / tau - math.log(math.exp(1 / tau) + 1))
    got = contrastive_loss(z1, z2, labels1, labels2, lengths1, lengths2, tau=tau)
    assert got.item() == pytest.approx(2 * per_anchor, rel=1e-6)


def test_padding_and_end_slot_are_not_negatives():
    z1, z2, labels1, labels2, lengths1, lengths2, valid = random_case(7, 4, 7, 6)
    z1, z2 = z1.float(), z2.float()
    base = contrastive_loss(z1, z2, labels1, labels2, lengths1, lengths2)
    outside = torch.arange(7).unsqueeze(0) >= (lengths1 - 1).unsqueeze(1)
    z1_changed = torch.where(outside.unsqueeze(-1), torch.randn_like(z1), z1).requires_grad_()
    changed = contrastive_loss(z1_changed, z2, labels1, labels2, lengths1, lengths2)
    torch.testing.assert_close(changed, base)
    changed.backward()
    assert torch.all(z1_changed.grad[outside] == 0)


@pytest.mark.parametrize('include_eos', [False, True])
def test_invariant_to_batch_order_and_view_swap(include_eos):
    z1, z2, labels1, labels2, lengths1, lengths2, valid = random_case(11, 6, 6, 8, invalid_frac=0.3)
    z1, z2 = z1.float(), z2.float()
    kw = dict(tau=0.7, include_eos=include_eos)
    base = contrastive_loss(z1, z2, labels1, labels2, lengths1, lengths2, valid=valid, **kw)
    p = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    permuted = contrastive_loss(z1[p], z2[p], labels1[p], labels2[p], lengths1[p], lengths2[p], valid=valid[p], **kw)
    swapped = contrastive_loss(z2, z1, labels2, labels1, lengths2, lengths1, valid=valid, **kw)
    torch.testing.assert_close(permuted, base, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(swapped, base, rtol=1e-6, atol=1e-6)


def test_invalid_pairs_contribute_nothing():
    z1, z2, labels1, labels2, lengths1, lengths2, _ = random_case(12, 5, 6, 8)
    z1 = z1.float().requires_grad_()
    z2 = z2.float()
    valid = torch.tensor([True, False, True, False, True])
    got = contrastive_loss(z1, z2, labels1, labels2, lengths1, lengths2, valid=valid)
    keep = valid.nonzero().squeeze(1)
    only_valid = contrastive_loss(z1[keep], z2[keep], labels1[keep], labels2[keep], lengths1[keep], lengths2[keep])
    torch.testing.assert_close(got, only_valid)
    got.backward()
    assert torch.all(z1.grad[~valid] == 0)


@pytest.mark.parametrize('include_eos', [False, True])
def test_no_nan_with_zero_or_one_character(include_eos):
    t_slots = 4
    z1 = F.normalize(torch.randn(3, t_slots, 5), dim=-1).requires_grad_()
    z2 = F.normalize(torch.randn(3, t_slots, 5), dim=-1).requires_grad_()
    labels1 = torch.tensor([[0, 0, 0, 0], [3, 0, 0, 0], [3, 0, 0, 0]])
    labels2 = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [3, 0, 0, 0]])
    lengths1 = torch.tensor([1, 2, 2])   # 0, 1, 1 characters
    lengths2 = torch.tensor([1, 1, 2])   # 0, 0, 1 characters
    got = contrastive_loss(z1, z2, labels1, labels2, lengths1, lengths2, include_eos=include_eos)
    got.backward()
    assert torch.isfinite(got)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    expected = contrastive_loss_loop(z1.detach(), z2.detach(), labels1, labels2, lengths1, lengths2, 2.0, include_eos,
                         torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)


def test_all_invalid_gives_zero_with_gradient():
    z1, z2, labels1, labels2, lengths1, lengths2, _ = random_case(13, 3, 5, 4)
    z1 = z1.float().requires_grad_()
    z2 = z2.float().requires_grad_()
    got = contrastive_loss(z1, z2, labels1, labels2, lengths1, lengths2, valid=torch.zeros(3, dtype=torch.bool))
    assert got.item() == 0.0 and got.requires_grad
    got.backward()
    assert torch.all(z1.grad == 0) and torch.all(z2.grad == 0)


def test_autocast_bfloat16_computes_in_float32():
    z1, z2, labels1, labels2, lengths1, lengths2, valid = random_case(14, 4, 6, 16)
    z1b, z2b = z1.bfloat16().requires_grad_(), z2.bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = contrastive_loss(z1b, z2b, labels1, labels2, lengths1, lengths2, tau=0.5)
    assert got.dtype == torch.float32
    on_rounded = contrastive_loss(z1b.detach().float(), z2b.detach().float(), labels1, labels2, lengths1, lengths2,
                                  tau=0.5)
    full = contrastive_loss(z1.float(), z2.float(), labels1, labels2, lengths1, lengths2, tau=0.5)
    torch.testing.assert_close(got, on_rounded, rtol=1e-5, atol=1e-6)  # no bf16 arithmetic inside
    torch.testing.assert_close(got, full, rtol=2e-2, atol=1e-2)
    got.backward()
    assert z1b.grad.dtype == torch.bfloat16 and torch.isfinite(z1b.grad.float()).all()


def test_module_and_onehot_helper():
    z1, z2, labels1, labels2, lengths1, lengths2, valid = random_case(15, 3, 5, 8, invalid_frac=0.3)
    z1, z2 = z1.float(), z2.float()
    onehot1 = F.one_hot(labels1, 4).float() * 0.9 + 0.1 / 4  # label-smoothed targets
    assert torch.equal(onehot_to_index(onehot1), labels1)
    module = ContrastiveLoss(tau=0.5, include_eos=True)
    got = module(z1, z2, labels1, labels2, lengths1, lengths2, valid=valid)
    want = contrastive_loss(z1, z2, labels1, labels2, lengths1, lengths2, tau=0.5, include_eos=True, valid=valid)
    assert torch.equal(got, want)


def test_rejects_onehot_labels():
    z = torch.zeros(2, 3, 4)
    labels = torch.zeros(2, 3, 5)
    lengths = torch.tensor([2, 2])
    with pytest.raises(ValueError, match='onehot_to_index'):
        contrastive_loss(z, z, labels, labels, lengths, lengths)
