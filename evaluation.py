"""Evaluation through the fastai Learner, and the results table of the test phase."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from fastai.basic_train import Learner

from callbacks.metrics import TextAccuracy, WordMetrics
from utils import CharsetMapper

TABLE_COLUMNS = ('dataset', 'samples', 'left out', 'cwr', 'ccr', 'mean ned', '1-ned', 'ted', 'ted/w', 'eval loss')


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


def evaluate(learn: Learner, dl, charset: CharsetMapper, case_sensitive: bool = False, model_eval: str = 'vision',
             record: bool = False, name: str = 'eval', left_out: int = 0) -> EvalResult:
    """Run `learn.validate` on `dl` with the TextAccuracy metric; the model is left in eval mode."""
    accuracy = TextAccuracy(learn, charset, case_sensitive, model_eval, record)
    values = learn.validate(dl=dl, metrics=[accuracy])
    return EvalResult(name, accuracy.metrics, float(values[0]), left_out, list(accuracy.records))


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
    percent = {'cwr', 'ccr', 'mean ned', '1-ned'}

    def cell(column: str, value: float | int | str) -> str:
        if column in percent:
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
    """Machine-readable copy of the table (fractions, not percent)."""
    with open(path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
