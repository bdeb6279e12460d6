"""Tests for evaluation/metrics.py: decoding, word metrics by hand, and the fastai 1.0.60 integration."""

import math
from functools import partial
from pathlib import Path

import pytest
import torch
from fastai.basic_data import DataBunch
from fastai.basic_train import Learner
from torch import nn

from evaluation.metrics import METRIC_NAMES, TextAccuracy, WordMetrics
from losses.recognition import RecognitionLoss, recognition_loss
from modules.decoding import decode_logits, pt_lengths
from utils import CharsetMapper

CHARSET = Path(__file__).resolve().parents[2] / 'data' / 'charset_36.txt'


@pytest.fixture(scope='module')
def charset():
    return CharsetMapper(CHARSET, max_length=5)


def _logits_for(texts, charset, num_slots, high=8.0):
    """Logits whose argmax spells each text followed by null slots."""
    out = torch.zeros(len(texts), num_slots, charset.num_classes)
    for i, text in enumerate(texts):
        labels = [charset.char_to_label[c] for c in text] + [0] * (num_slots - len(text))
        for s, label in enumerate(labels[:num_slots]):
            out[i, s, label] = high
    return out


# --- WordMetrics -------------------------------------------------------------------------------------------------

GTS = ['hello', 'World', 'abc', 'test']
PREDS = ['hello', 'world', 'abd', 'tst']


def test_word_metrics_case_insensitive_by_hand():
    m = WordMetrics(case_sensitive=False)
    m.update(PREDS, GTS)
    # Per word (lower-cased): ed 0, 0, 1, 1; positional matches 5, 5, 2 (a, b), 1 (t); gt lengths 5, 5, 3, 4.
    s = m.summary()
    assert s['words'] == 4
    assert s['cwr'] == pytest.approx(2 / 4)
    assert s['ccr'] == pytest.approx(13 / 17)
    assert s['ted'] == 2
    assert s['ted/w'] == pytest.approx(0.5)
    assert s['ned'] == pytest.approx((0 + 0 + 1 / 3 + 1 / 4) / 4)
    assert s['1-ned'] == pytest.approx(1 - 7 / 48)
    assert (m.words, m.correct_words, m.gt_chars, m.correct_chars, m.total_ed) == (4, 2, 17, 13, 2)
    assert set(s) == set(METRIC_NAMES) | {'words'}


def test_word_metrics_case_sensitive_by_hand():
    m = WordMetrics(case_sensitive=True)
    m.update(PREDS, GTS)
    # 'world' vs 'World': ed 1, positional matches 4.
    s = m.summary()
    assert s['cwr'] == pytest.approx(1 / 4)
    assert s['ccr'] == pytest.approx(12 / 17)
    assert s['ted'] == 3
    assert s['ted/w'] == pytest.approx(3 / 4)
    assert s['ned'] == pytest.approx((0 + 1 / 5 + 1 / 3 + 1 / 4) / 4)


def test_word_metrics_longer_and_empty_predictions():
    m = WordMetrics()
    m.update(['abcd', ''], ['ab', 'xyz'])
    # 'abcd' vs 'ab': ed 2 over max length 4, positional 2 of 2; '' vs 'xyz': ed 3 over 3, positional 0 of 3.
    s = m.summary()
    assert s['cwr'] == 0
    assert s['ccr'] == pytest.approx(2 / 5)
    assert s['ted'] == 5
    assert s['ned'] == pytest.approx((2 / 4 + 3 / 3) / 2)
    assert s['1-ned'] == pytest.approx(0.25)


def test_word_metrics_merge_equals_concatenation():
    preds_a, gts_a = ['hello', 'abd'], ['hello', 'abc']
    preds_b, gts_b = ['wrld', 'x', 'Test'], ['world', 'y', 'test']
    a, b, both = WordMetrics(), WordMetrics(), WordMetrics()
    a.update(preds_a, gts_a)
    b.update(preds_b, gts_b)
    both.update(preds_a + preds_b, gts_a + gts_b)
    assert a.merge(b) is a
    assert a.summary() == pytest.approx(both.summary())
    assert a.sum_ned == pytest.approx(both.sum_ned)


def test_word_metrics_empty_and_mismatch():
    s = WordMetrics().summary()
    assert s['words'] == 0 and math.isnan(s['cwr']) and math.isnan(s['ned'])
    with pytest.raises(ValueError):
        WordMetrics().update(['a'], [])


# --- decoding ----------------------------------------------------------------------------------------------------

def test_pt_lengths_against_loop():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (50, 6), generator=g)  # null often enough, sometimes never
    labels[0] = torch.tensor([1, 2, 1, 2, 1, 2])
    logits = torch.nn.functional.one_hot(labels, 4).float() + 0.01 * torch.randn(50, 6, 4, generator=g)
    expected = []
    for row in labels.tolist():
        expected.append(row.index(0) + 1 if 0 in row else len(row))
    got = pt_lengths(logits)
    assert got.dtype == torch.long
    assert got.tolist() == expected
    assert got[0].item() == 6


def test_decode_logits_crafted(charset):
    t = 4
    logits = torch.zeros(3, t, charset.num_classes)
    a, b, z = (charset.char_to_label[c] for c in 'abz')
    # Sample 0: 'ab' then null, then a stray 'z' after the null (must be cut).
    # Probabilities chosen by hand: slot 0 p(a)=e^2/(e^2+36), slot 1 p(b)=e^1/(e^1+36), slot 2 p(null)=e^3/(e^3+36).
    logits[0, 0, a], logits[0, 1, b], logits[0, 2, 0], logits[0, 3, z] = 2.0, 1.0, 3.0, 5.0
    # Sample 1: no null slot at all -> length T, all four slots count.
    for s, label in enumerate((a, b, a, z)):
        logits[1, s, label] = 4.0
    # Sample 2: first slot null -> empty text, length 1.
    logits[2, 0, 0] = 6.0
    logits[2, 1, a] = 9.0
    texts, confs, lengths = decode_logits(logits, charset)
    assert texts == ['ab', 'abaz', '']
    assert lengths.tolist() == [3, 4, 1]
    c = charset.num_classes - 1
    p = [math.exp(v) / (math.exp(v) + c) for v in (2.0, 1.0, 3.0)]
    assert confs[0] == pytest.approx(p[0] * p[1] * p[2], rel=1e-5)
    assert confs[1] == pytest.approx((math.exp(4.0) / (math.exp(4.0) + c)) ** 4, rel=1e-5)
    assert confs[2] == pytest.approx(math.exp(6.0) / (math.exp(6.0) + c), rel=1e-5)


# --- fastai integration ------------------------------------------------------------------------------------------

class _EchoModel(nn.Module):
    """Returns its input as the logits of the output dict."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        logits = (x * self.scale).contiguous()
        return {'logits': logits}


class _PairDataset(torch.utils.data.Dataset):
    """x = logits spelling a prediction; y = (one-hot ground truth, length, extra item)."""

    def __init__(self, preds, gts, charset):
        self.x = _logits_for(preds, charset, charset.max_length + 1)
        self.y = [charset.onehot(gt.lower()) for gt in gts]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        target, length = self.y[i]
        return self.x[i], (target, length, 0)


VAL_PREDS = ['hello', 'world', 'abd', 'tst', 'cat', '']
VAL_GTS = ['hello', 'world', 'abc', 'test', 'cat', 'dog']


def _expected_values():
    """Metrics of VAL_PREDS vs VAL_GTS computed by hand, in METRIC_NAMES order."""
    # ed: 0, 0, 1, 1, 0, 3; positional matches: 5, 5, 2, 1, 3, 0 of gt lengths 5, 5, 3, 4, 3, 3 (= 23).
    ned = (0 + 0 + 1 / 3 + 1 / 4 + 0 + 3 / 3) / 6
    return [3 / 6, 16 / 23, ned, 1 - ned, 5.0, 5 / 6]


def _learner(charset, tmp_path, **kwargs):
    train = _PairDataset(VAL_PREDS, VAL_GTS, charset)
    valid = _PairDataset(VAL_PREDS, VAL_GTS, charset)
    data = DataBunch.create(train, valid, bs=4, num_workers=0, no_check=True, device=torch.device('cpu'),
                            path=tmp_path, pin_memory=False)
    return Learner(data, _EchoModel(), loss_func=RecognitionLoss(), silent=True, **kwargs)


def test_validate_with_metric_returns_values(charset, tmp_path):
    learn = _learner(charset, tmp_path)
    acc = TextAccuracy(learn, charset, record=True)
    result = learn.validate(metrics=[acc])
    assert len(result) == 1 + len(METRIC_NAMES)
    assert result[1:] == pytest.approx(_expected_values())
    # valid loss: batch-size-weighted mean of the recognition loss over batches of 4 and 2.
    ds = learn.data.valid_ds
    targets = torch.stack([t for t, _ in ds.y])
    lengths = torch.tensor([n for _, n in ds.y])
    per_batch = [recognition_loss(ds.x[a:b], targets[a:b], lengths[a:b]).item() for a, b in ((0, 4), (4, 6))]
    assert float(result[0]) == pytest.approx((4 * per_batch[0] + 2 * per_batch[1]) / 6, rel=1e-5)
    assert acc.metrics.words == 6
    assert [(g, p) for g, p, _ in acc.records] == list(zip(VAL_GTS, VAL_PREDS))
    assert all(0 < c <= 1 for _, _, c in acc.records)
    # A second validate resets the accumulator instead of adding to it.
    again = learn.validate(metrics=[acc])
    assert again[1:] == pytest.approx(_expected_values())
    assert acc.metrics.words == 6 and len(acc.records) == 6


def test_validate_with_callback_returns_values(charset, tmp_path):
    learn = _learner(charset, tmp_path)
    acc = TextAccuracy(learn, charset)
    result = learn.validate(callbacks=[acc])
    assert result[1:] == pytest.approx(_expected_values())


@pytest.mark.parametrize('as_metric', [True, False])
def test_fit_recorder_names_align_with_values(charset, tmp_path, as_metric):
    if as_metric:
        learn = _learner(charset, tmp_path, callback_fns=[])
        acc = TextAccuracy(learn, charset)
        learn.metrics = [acc]
    else:
        learn = _learner(charset, tmp_path)
        acc = TextAccuracy(learn, charset)
        learn.callbacks.append(acc)
    learn.fit(2, lr=0.0)
    rec = learn.recorder
    assert rec.names == ['epoch', 'train_loss', 'valid_loss', *METRIC_NAMES, 'time']
    assert len(rec.metrics) == 2
    for epoch_values in rec.metrics:
        assert epoch_values == pytest.approx(_expected_values())


def test_partial_construction_as_callback_fn(charset, tmp_path):
    learn = _learner(charset, tmp_path, callback_fns=[partial(TextAccuracy, charset=charset)])
    learn.fit(1, lr=0.0)
    assert learn.recorder.metrics[-1] == pytest.approx(_expected_values())
    assert learn.text_accuracy.metrics.words == 6
