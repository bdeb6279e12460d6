"""Tests for losses/recognition.py against hand-computed and loop references."""

import math

import pytest
import torch

from losses.recognition import RecognitionLoss, recognition_loss


def _loop_reference(logits, targets, lengths, valid=None):
    """Plain per-sample, per-slot soft cross-entropy averaged over counted slots."""
    total, count = 0.0, 0
    n, t, c = logits.shape
    for i in range(n):
        if valid is not None and not bool(valid[i]):
            continue
        for s in range(min(int(lengths[i]), t)):
            row = [float(v) for v in logits[i, s]]
            log_z = math.log(sum(math.exp(v) for v in row))
            total += -sum(float(targets[i, s, k]) * (row[k] - log_z) for k in range(c))
            count += 1
    return total / count if count else 0.0


def test_hand_computed_with_padding_and_invalid_sample():
    # T=3, C=3. Sample 0: one character (class 2) + end slot, slot 2 is padding.
    # Sample 1: marked invalid. Sample 2: length 5 > T, all three slots count.
    logits = torch.tensor([
        [[0.0, 0.0, math.log(2.0)], [math.log(3.0), 0.0, 0.0], [100.0, -100.0, 7.0]],
        [[5.0, 1.0, 2.0], [1.0, 1.0, 1.0], [0.0, 3.0, 0.0]],
        [[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [0.0, 0.0, math.log(6.0)]],
    ])
    targets = torch.zeros(3, 3, 3)
    targets[0, 0, 2] = 1
    targets[0, 1, 0] = 1
    targets[0, 2, 1] = 1  # padding slot with a deliberately bad target: must be ignored
    targets[1, :, 1] = 1
    targets[2, 0, 0] = 1
    targets[2, 1, 1] = 1
    targets[2, 2, 2] = 1
    lengths = torch.tensor([2, 3, 5])
    valid = torch.tensor([True, False, True])
    # Slot losses: p(class 2) = 2/4, p(class 0) = 3/5, then 1/3, 2/4, 6/8.
    expected = -(math.log(0.5) + math.log(0.6) + math.log(1 / 3) + math.log(0.5) + math.log(0.75)) / 5
    got = recognition_loss(logits, targets, lengths, valid)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothed_targets_hand_computed():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    targets = torch.tensor([[[0.1, 0.9]]])
    expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
    assert recognition_loss(logits, targets, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)


def test_matches_loop_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    n, t, c = 5, 7, 6
    logits = torch.randn(n, t, c, generator=g) * 3
    targets = torch.softmax(torch.randn(n, t, c, generator=g), dim=-1)
    lengths = torch.tensor([1, 7, 3, 9, 4])
    valid = torch.tensor([True, True, False, True, True])
    for v in (None, valid):
        got = recognition_loss(logits, targets, lengths, v).item()
        assert got == pytest.approx(_loop_reference(logits, targets, lengths, v), rel=1e-5)


def test_bf16_logits_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 5, generator=g).bfloat16()
    targets = torch.nn.functional.one_hot(torch.randint(0, 5, (3, 4), generator=g), 5).float()
    lengths = torch.tensor([2, 4, 1])
    got = recognition_loss(logits, targets, lengths)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_loop_reference(logits.float(), targets, lengths), rel=1e-5)


def test_no_counted_slot_gives_zero_with_gradient():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    targets = torch.zeros(2, 3, 4)
    loss = recognition_loss(logits, targets, torch.tensor([2, 3]), torch.tensor([False, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_ignored_slots_get_no_gradient():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    targets = torch.nn.functional.one_hot(torch.tensor([[1, 2, 0, 0], [2, 0, 0, 0]]), 3).float()
    recognition_loss(logits, targets, torch.tensor([3, 2]), torch.tensor([True, False])).backward()
    assert torch.all(logits.grad[0, :3].abs().sum(-1) > 0)
    assert torch.all(logits.grad[0, 3:] == 0) and torch.all(logits.grad[1] == 0)


def _data(seed=0, n=4, t=5, c=6):
    g = torch.Generator().manual_seed(seed)
    targets = torch.nn.functional.one_hot(torch.randint(0, c, (n, t), generator=g), c).float()
    lengths = torch.randint(1, t + 2, (n,), generator=g)
    return g, targets, lengths


def test_weight_scales_the_term_and_records_it():
    g, targets, lengths = _data()
    b = torch.randn(4, 5, 6, generator=g)
    ref_b = _loop_reference(b, targets, lengths)
    crit = RecognitionLoss(weight=0.5)
    # Extra target items (e.g. a ConCLR pairing tensor) are ignored.
    total = crit({'logits': b}, targets, lengths, torch.zeros(4), 'extra')
    assert total.item() == pytest.approx(0.5 * ref_b, rel=1e-5)
    assert set(crit.losses) == {'vision_loss'}
    assert crit.losses['vision_loss'].item() == pytest.approx(0.5 * ref_b, rel=1e-5)
    assert not crit.losses['vision_loss'].requires_grad


def test_single_dict_output_and_valid_keyword():
    g, targets, lengths = _data(seed=2)
    a = torch.randn(4, 5, 6, generator=g, requires_grad=True)
    valid = torch.tensor([True, False, True, True])
    crit = RecognitionLoss(weight=2.0)
    total = crit({'logits': a}, targets, lengths, valid=valid)
    assert total.item() == pytest.approx(2.0 * _loop_reference(a.detach(), targets, lengths, valid), rel=1e-5)
    total.backward()
    assert a.grad is not None
    assert list(crit.losses) == ['vision_loss']


def test_a_list_of_outputs_is_a_clear_error():
    g, targets, lengths = _data(seed=3)
    outputs = [{'logits': torch.randn(4, 5, 6, generator=g)} for _ in range(3)]
    with pytest.raises(TypeError, match='ConCLRLoss'):
        RecognitionLoss()(outputs, targets, lengths)


def test_losses_reset_between_calls():
    g, targets, lengths = _data(seed=4)
    first, second = torch.randn(4, 5, 6, generator=g), torch.randn(4, 5, 6, generator=g)
    crit = RecognitionLoss(name='language')
    crit({'logits': first}, targets, lengths)
    crit({'logits': second}, targets, lengths)
    assert list(crit.losses) == ['language_loss']
    assert crit.losses['language_loss'].item() == pytest.approx(_loop_reference(second, targets, lengths), rel=1e-5)
