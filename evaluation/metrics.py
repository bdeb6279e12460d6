"""Word-level recognition metrics (cwr, ccr, ned, ted) and the fastai callback that computes them on validation."""

from __future__ import annotations

import math
from typing import Any, Sequence

import editdistance
from fastai.basic_train import LearnerCallback

from modules.decoding import decode_logits, onehot_texts
from utils import CharsetMapper

METRIC_NAMES = ('cwr', 'ccr', 'ned', '1-ned', 'ted', 'ted/w')


def _correct_chars(pred: str, gt: str) -> int:
    """Characters equal at the same position, up to the shorter length."""
    return sum(p == g for p, g in zip(pred, gt))


class WordMetrics:
    """Accumulates raw sums for word metrics; `merge` combines accumulators of several datasets or processes.

    ned is the MEAN over words of edit distance / max(len(gt), len(pred)) (the ICDAR 2019 normalisation recent
    papers report as 1-NED, always in [0, 1]); upstream ABINet logs the SUM of edit distance / len(gt), which
    exceeds 1 per word for long wrong predictions. Rates of an empty accumulator are NaN.
    """

    def __init__(self, case_sensitive: bool = False):
        self.case_sensitive = case_sensitive
        self.words = 0
        self.correct_words = 0
        self.gt_chars = 0
        self.correct_chars = 0
        self.total_ed = 0
        self.sum_ned = 0.0

    def update(self, preds: Sequence[str], gts: Sequence[str]) -> None:
        """Add predicted and ground-truth words (same order)."""
        if len(preds) != len(gts):
            raise ValueError(f'{len(preds)} predictions for {len(gts)} ground truths')
        for pred, gt in zip(preds, gts):
            if not self.case_sensitive:
                pred, gt = pred.lower(), gt.lower()
            distance = editdistance.eval(pred, gt)
            self.words += 1
            self.correct_words += int(pred == gt)
            self.gt_chars += len(gt)
            self.correct_chars += _correct_chars(pred, gt)
            self.total_ed += distance
            self.sum_ned += distance / max(len(gt), len(pred), 1)

    def merge(self, other: WordMetrics) -> WordMetrics:
        """Add another accumulator's sums into this one (returns self)."""
        if other.case_sensitive != self.case_sensitive:
            raise ValueError('cannot merge case-sensitive and case-insensitive metrics')
        self.words += other.words
        self.correct_words += other.correct_words
        self.gt_chars += other.gt_chars
        self.correct_chars += other.correct_chars
        self.total_ed += other.total_ed
        self.sum_ned += other.sum_ned
        return self

    def summary(self) -> dict[str, float]:
        """{'cwr', 'ccr', 'ned', '1-ned', 'ted', 'ted/w', 'words'} of everything added so far."""
        words = self.words
        ned = self.sum_ned / words if words else math.nan
        return {
            'cwr': self.correct_words / words if words else math.nan,
            'ccr': self.correct_chars / self.gt_chars if self.gt_chars else math.nan,
            'ned': ned,
            '1-ned': 1.0 - ned,
            'ted': float(self.total_ed),
            'ted/w': self.total_ed / words if words else math.nan,
            'words': words,
        }

    def __repr__(self) -> str:
        return f'WordMetrics({self.summary()})'


class TextAccuracy(LearnerCallback):
    """fastai 1.0.60 callback adding METRIC_NAMES, in that order, to `last_metrics` at the end of validation.

    Use it as a metric (`Learner(metrics=[...])`, `learn.validate(metrics=[...])`) or as a callback
    (`learn.callbacks`, `learn.validate(callbacks=[...])`): `_order` puts it before the Recorder, which prints
    the values under the names added here. Only validation batches are counted. The latest accumulator is
    `self.metrics`; with `record=True`, `self.records` holds (gt, pred, confidence) of every validation sample.
    """

    _order = -20  # before Recorder (-10), so its names and values are in place when the Recorder reads them

    def __init__(self, learn, charset: CharsetMapper, case_sensitive: bool = False, record: bool = False):
        super().__init__(learn)
        self.charset = charset
        self.case_sensitive = case_sensitive
        self.record = record
        # As a metric, CallbackHandler lists one name for it (`name`); the other five are added to the Recorder.
        self.name = METRIC_NAMES[0]
        self.metrics = WordMetrics(case_sensitive)
        self.records: list[tuple[str, str, float]] = []

    def on_train_begin(self, metrics: Sequence[Any] | None = None, **kwargs: Any) -> None:
        """Register the metric names with the learner's Recorder, if it has one."""
        recorder = self.learn.__dict__.get('recorder')
        if recorder is None:
            return
        as_metric = any(m is self for m in (metrics or []))
        names = list(METRIC_NAMES[1:] if as_metric else METRIC_NAMES)
        # Recorder.add_metric_names only appends: add names once, however often validate() is called.
        added = getattr(recorder, '_added_met_names', [])
        missing = [n for n in names if n not in added]
        if missing:
            recorder.add_metric_names(missing)

    def on_epoch_begin(self, **kwargs: Any) -> None:
        """Start a fresh accumulator."""
        self.metrics = WordMetrics(self.case_sensitive)
        self.records = []

    def on_batch_end(self, last_output: Any, last_target: Any, train: bool, **kwargs: Any) -> None:
        """Decode a validation batch and accumulate its metrics."""
        if train:
            return
        preds, confidences, _ = decode_logits(last_output['logits'], self.charset)
        gt_labels = last_target[0] if isinstance(last_target, (list, tuple)) else last_target
        gts = onehot_texts(gt_labels, self.charset)
        self.metrics.update(preds, gts)
        if self.record:
            self.records.extend(zip(gts, preds, confidences))

    def on_epoch_end(self, last_metrics: list, **kwargs: Any) -> dict | None:
        """Append the epoch's metrics to `last_metrics` (only after a validation pass)."""
        if not last_metrics or last_metrics[0] is None:
            return None
        summary = self.metrics.summary()
        return {'last_metrics': list(last_metrics) + [summary[n] for n in METRIC_NAMES]}
