import math

import pytest
import torch

from configuration import Config
from losses.conclr_loss import ConCLRLoss, view_weights
from training.builders import build_loss

# T = 4 slots, classes 0 (null), 1 ('a'), 2 ('b'); three samples.
# original: 'ab', 'b', 'a'; view 1: 'ab', overlong (truncated, invalid), 'aa'; view 2: 'ba', 'bb', overlong (invalid).
ORIGINAL = ([1, 2, 0, 0], [2, 0, 0, 0], [1, 0, 0, 0]), (3, 2, 2)
VIEW1 = ([1, 2, 0, 0], [2, 1, 2, 1], [1, 1, 0, 0]), (3, 4, 3), (True, False, True)
VIEW2 = ([2, 1, 0, 0], [2, 2, 0, 0], [1, 2, 1, 2]), (3, 3, 4), (True, True, False)
WEIGHTS = (1.0, 0.5, 0.25)
ALPHA, TAU = 0.3, 2.0


def _onehot(rows):
    return torch.eye(3)[torch.tensor(rows)]


def _plain_ce(logits, rows, lengths, valid):
    """Mean over the counted slots (t < length, valid samples) of -log softmax(logits)[target], by a plain loop."""
    total, count = 0.0, 0
    for i, row in enumerate(rows):
        if not valid[i]:
            continue
        for t in range(min(lengths[i], len(row))):
            scores = [float(v) for v in logits[i, t]]
            log_norm = math.log(sum(math.exp(s) for s in scores))
            total += log_norm - scores[row[t]]
            count += 1
    return total / count


def _embeddings():
    """Sample 0 (the only pair valid in both views): 'a' is (1, 0) and 'b' is (0, 1) in both views, padding slots
    point elsewhere. Samples 1 and 2 get embeddings that would change the loss if they took part."""
    pad = [0.6, 0.8]
    z1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], pad, pad],
                       [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
                       [[0.0, 1.0], [1.0, 0.0], pad, pad]])
    z2 = torch.tensor([[[0.0, 1.0], [1.0, 0.0], pad, pad],
                       [[0.0, 1.0], [1.0, 0.0], pad, pad],
                       [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    return z1, z2


def _outputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = [{'logits': torch.randn(3, 4, 3, generator=g)} for _ in WEIGHTS]  # the model's: tensors only
    outputs[1]['embedding'], outputs[2]['embedding'] = _embeddings()
    return outputs


def _targets():
    (rows0, len0), (rows1, len1, v1), (rows2, len2, v2) = ORIGINAL, VIEW1, VIEW2
    return (_onehot(rows0), torch.tensor(len0), _onehot(rows1), torch.tensor(len1), torch.tensor(v1),
            _onehot(rows2), torch.tensor(len2), torch.tensor(v2))


def test_total_matches_a_hand_computed_value():
    outputs = _outputs()
    loss_func = ConCLRLoss(tau=TAU, alpha=ALPHA, weights=WEIGHTS)
    total = loss_func(outputs, *_targets())

    ce = [_plain_ce(outputs[0]['logits'], ORIGINAL[0], ORIGINAL[1], (True, True, True)),
          _plain_ce(outputs[1]['logits'], *VIEW1),  # samples 0 and 2: sample 1 is overlong in view 1
          _plain_ce(outputs[2]['logits'], *VIEW2)]  # samples 0 and 1
    # Contrastive term, sample 0 only: four anchors (a, b in each view), each with one positive at
    # similarity 1/tau and two negatives at similarity 0, so loss_m = log(e^(1/tau) + 2) - 1/tau.
    clr = 4 * (math.log(math.exp(1 / TAU) + 2) - 1 / TAU)
    expected = sum(w * c for w, c in zip(WEIGHTS, ce)) + ALPHA * clr
    assert float(total) == pytest.approx(expected, rel=1e-5)

    losses = {k: float(v) for k, v in loss_func.losses.items()}
    for name, w, c in zip(('vision', 'vision_aug1', 'vision_aug2'), WEIGHTS, ce):
        assert losses[f'{name}_loss'] == pytest.approx(w * c, rel=1e-5)
    assert losses['rec_loss'] == pytest.approx(sum(w * c for w, c in zip(WEIGHTS, ce)), rel=1e-5)
    assert losses['clr_loss'] == pytest.approx(clr, rel=1e-5)
    assert losses['invalid_rate'] == pytest.approx(2 / 3)  # samples 1 and 2 leave the contrastive loss
    assert losses['overlong_rate_view1'] == pytest.approx(1 / 3)
    assert losses['overlong_rate_view2'] == pytest.approx(1 / 3)


def test_invalid_pairs_do_not_move_the_total():
    # Changing everything an invalid pair holds in the view where it is overlong (logits, embeddings) changes nothing.
    loss_func = ConCLRLoss(tau=TAU, alpha=ALPHA, weights=WEIGHTS)
    base = float(loss_func(_outputs(), *_targets()))
    outputs = _outputs()
    outputs[1]['logits'][1] += 5.0
    outputs[2]['logits'][2] -= 3.0
    outputs[1]['embedding'][1] = outputs[1]['embedding'][1].flip(-1)
    outputs[2]['embedding'][2] = outputs[2]['embedding'][2].flip(-1)
    assert float(loss_func(outputs, *_targets())) == pytest.approx(base, rel=1e-6)
    # ...while the same change to a valid sample does.
    outputs[1]['logits'][0] += torch.linspace(-2, 2, 3)
    assert float(loss_func(outputs, *_targets())) != pytest.approx(base, rel=1e-3)


def test_alpha_scales_only_the_contrastive_term():
    outputs = _outputs()
    low = ConCLRLoss(tau=TAU, alpha=0.0, weights=WEIGHTS)
    high = ConCLRLoss(tau=TAU, alpha=1.0, weights=WEIGHTS)
    rec = float(low(outputs, *_targets()))
    assert rec == pytest.approx(float(low.losses['rec_loss']))
    assert float(high(outputs, *_targets())) == pytest.approx(rec + float(high.losses['clr_loss']), rel=1e-6)


def test_evaluation_is_the_weighted_recognition_loss():
    output = _outputs()[0]
    rows, lengths = ORIGINAL
    loss_func = ConCLRLoss(weights=(0.7, 0.5, 0.5))
    value = float(loss_func(output, _onehot(rows), torch.tensor(lengths)))
    assert value == pytest.approx(0.7 * _plain_ce(output['logits'], rows, lengths, (True, True, True)), rel=1e-5)
    assert set(loss_func.losses) == {'vision_loss'}


@pytest.mark.parametrize('weight, expected', [([1.0, 0.3, 0.2], [1.0, 0.3, 0.2]), (2.0, [2.0, 1.0, 1.0])])
def test_view_weights_from_config(tmp_path, weight, expected):
    """model.vision.loss_weight: three values as given, one number w as [w, w/2, w/2]; the builder passes them on."""
    assert view_weights(weight) == expected
    config = Config()
    config.model_vision_loss_weight = weight
    assert build_loss(config, conclr=True).weights == expected
    assert build_loss(config, conclr=False).weight == expected[0]  # a plain model: the original view's weight


def test_loss_weight_list_needs_three_values():
    with pytest.raises(ValueError, match='loss_weight'):
        view_weights([1.0, 0.5])
