"""Evaluation through the fastai Learner (gathered exactly across processes), and the test-phase results table."""

from __future__ import annotations

import csv
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from fastai.basic_train import Learner, LearnerCallback

from evaluation.metrics import TextAccuracy, WordMetrics
from runtime.distributed import ShardedBatchSampler, all_gather_objects, broadcast_buffers, interleave, unwrap
from utils import CharsetMapper

TABLE_COLUMNS = ('dataset', 'samples', 'left out', 'cwr', 'ccr', 'mean ned', '1-ned', 'ted', 'ted/w', 'eval loss')
PERCENT_COLUMNS = ('cwr', 'ccr', 'mean ned', '1-ned')  # fractions in the rows, percent in the table and the CSV


@dataclass
class EvalResult:
    """Metrics of one evaluated set: raw sums, batch-size-weighted loss, and per-sample records if asked."""

    name: str
    metrics: WordMetrics
    loss: float
    left_out: int = 0
    records: list[tuple[str, str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """cwr, ccr, ned, 1-ned, ted, ted/w, words and loss as one dict."""
        return {**self.metrics.summary(), 'loss': self.loss}


class _BatchLosses(LearnerCallback):
    """Records every validation batch's loss (float32) and size, in order."""

    _order = 10

    def __init__(self, learn: Learner):
        super().__init__(learn)
        self.losses: list[float] = []
        self.sizes: list[int] = []

    def on_batch_end(self, last_loss: torch.Tensor, last_target: Any, train: bool, **kwargs: Any) -> None:
        if train:
            return
        target = last_target[0] if isinstance(last_target, (list, tuple)) else last_target
        self.losses.append(float(last_loss))
        self.sizes.append(int(target.shape[0]))


class _StopCheck(LearnerCallback):
    """Ends an evaluation early once `should_stop()` is true (a stop signal arrived); its result is then partial."""

    def __init__(self, learn: Learner, should_stop: Callable[[], bool]):
        super().__init__(learn)
        self.should_stop = should_stop

    def on_batch_end(self, **kwargs: Any) -> dict | None:
        return {'stop_epoch': True} if self.should_stop() else None


def weighted_loss(losses: list[float], sizes: list[int]) -> float:
    """Batch-size-weighted mean of per-batch losses, computed exactly as fastai's `validate` does (float32)."""
    if not sizes:
        return math.nan
    nums = np.array(sizes, dtype=np.float32)
    return float((np.array(losses, dtype=np.float32) * nums).sum() / nums.sum())


def _sharded_sampler(dl: Any) -> ShardedBatchSampler | None:
    inner = getattr(dl, 'dl', dl)  # fastai's DeviceDataLoader wraps the torch DataLoader
    sampler = getattr(inner, 'batch_sampler', None)
    return sampler if isinstance(sampler, ShardedBatchSampler) else None


@contextmanager
def _unwrapped(learn: Learner) -> Iterator[None]:
    """Evaluate with the plain model: a DDP forward may start collectives, and shards can differ by a batch."""
    wrapped = learn.model
    model = unwrap(wrapped)
    if model is wrapped:
        yield
        return
    broadcast_buffers(wrapped)  # every rank evaluates with rank 0's BatchNorm statistics, as its checkpoint has
    learn.model = model
    try:
        yield
    finally:
        learn.model = wrapped


def evaluate(learn: Learner, dl, charset: CharsetMapper, case_sensitive: bool = False,
             record: bool = False, name: str = 'eval', left_out: int = 0,
             should_stop: Callable[[], bool] | None = None) -> EvalResult:
    """Evaluate `learn`'s model on `dl` with the TextAccuracy metric; the model is left in eval mode.

    When `dl` draws its batches from a ShardedBatchSampler (a distributed run), every rank evaluates its share
    and the per-batch losses and per-sample predictions of all ranks are gathered and put back in single-process
    order before the metrics are computed, so the result equals a single-process evaluation exactly. Every rank
    must call it then (it is a collective) and every rank gets the whole result. With `should_stop`, the
    evaluation ends after the batch at which it turns true (the result then covers only the batches done).
    """
    accuracy = TextAccuracy(learn, charset, case_sensitive, record=True)
    batches = _BatchLosses(learn)
    callbacks = [batches] + ([_StopCheck(learn, should_stop)] if should_stop is not None else [])
    with _unwrapped(learn):
        if len(dl):
            learn.validate(dl=dl, callbacks=callbacks, metrics=[accuracy])
        else:  # a rank with no batch of its own (fewer batches than processes); fastai cannot validate nothing
            learn.model.eval()
    local = []
    start = 0
    for loss, size in zip(batches.losses, batches.sizes):
        local.append((loss, size, accuracy.records[start:start + size]))
        start += size
    ordered = interleave(all_gather_objects(local)) if _sharded_sampler(dl) is not None else local
    metrics = WordMetrics(case_sensitive)
    records = [r for _, _, batch in ordered for r in batch]
    metrics.update([pred for _, pred, _ in records], [gt for gt, _, _ in records])
    loss = weighted_loss([b[0] for b in ordered], [b[1] for b in ordered])
    return EvalResult(name, metrics, loss, left_out, records if record else [])


def table_rows(results: list[EvalResult]) -> list[dict[str, float | int | str]]:
    """One row per set, then `all` (every image pooled) and `average` (mean of the sets' values)."""
    rows = [_row(r.name, r.metrics, r.loss, r.left_out) for r in results]
    if len(results) > 1:
        pooled = WordMetrics(results[0].metrics.case_sensitive)
        for r in results:
            pooled.merge(r.metrics)
        words = sum(r.metrics.words for r in results)
        loss = sum(r.loss * r.metrics.words for r in results) / max(words, 1)
        rows.append(_row('all', pooled, loss, sum(r.left_out for r in results)))
        average = {'dataset': 'average', 'samples': rows[-1]['samples'], 'left out': rows[-1]['left out']}
        for column in TABLE_COLUMNS[3:]:
            average[column] = sum(row[column] for row in rows[:len(results)]) / len(results)
        rows.append(average)
    return rows


def _row(name: str, metrics: WordMetrics, loss: float, left_out: int) -> dict[str, float | int | str]:
    s = metrics.summary()
    return {'dataset': name, 'samples': int(metrics.words), 'left out': int(left_out), 'cwr': s['cwr'],
            'ccr': s['ccr'], 'mean ned': s['ned'], '1-ned': s['1-ned'], 'ted': s['ted'], 'ted/w': s['ted/w'],
            'eval loss': loss}


def format_table(rows: list[dict[str, float | int | str]]) -> str:
    """A fixed-width text table; cwr, ccr, mean ned and 1-ned in percent."""
    def cell(column: str, value: float | int | str) -> str:
        if column in PERCENT_COLUMNS:
            return f'{100 * float(value):.2f}'
        if column == 'ted':
            return f'{float(value):.0f}'
        if column in ('ted/w', 'eval loss'):
            return f'{float(value):.4f}'
        return str(value)

    cells = [[cell(c, row[c]) for c in TABLE_COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(TABLE_COLUMNS)]
    header = ' | '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(TABLE_COLUMNS, widths)))
    lines = ['cwr, ccr, mean ned and 1-ned in %; ned = mean over words of edit distance / max(len(gt), len(pred))',
             header,
             '-+-'.join('-' * w for w in widths)]
    for i, r in enumerate(cells):
        if i == len(cells) - 2 and len(cells) > 2:
            lines.append('-+-'.join('-' * w for w in widths))
        lines.append(' | '.join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths))))
    return '\n'.join(lines)


def write_csv(rows: list[dict[str, float | int | str]], path: str | Path) -> None:
    """Machine-readable copy of the table, in the table's units (cwr, ccr, mean ned, 1-ned in percent), written
    to a temporary file and renamed into place."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS))
        writer.writeheader()
        writer.writerows({k: 100 * float(v) if k in PERCENT_COLUMNS else v for k, v in row.items()} for row in rows)
    os.replace(tmp, path)
