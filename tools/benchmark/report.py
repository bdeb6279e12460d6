"""The benchmark's result table: one row per metric (value, target, PASS/FAIL, note), printed and saved as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Every metric key the JSON holds (amp-off names; other precisions add '@bf16' / '@fp16' to the train. and infer.
# keys). A value is None when that line was skipped.
METRIC_KEYS = (
    'train.abinet.step_s', 'train.abinet.img_s', 'train.conclr.step_s', 'train.conclr.img_s', 'train.ratio',
    'train.abinet3n.step_s', 'train.conclr_overhead', 'train.abinet.mfu', 'flops.abinet.gflop', 'flops.matmul_tflops',
    'conaug.equal', 'conaug.b384.vec_s', 'conaug.b384.loop_s', 'conaug.b384.speedup', 'conaug.b384.copy_s',
    'conaug.b384.vs_copy', 'conaug.b384.frac_step',
    'conaug.batch.vec_s', 'conaug.batch.frac_step',
    'clr.equal', 'clr.max_rel_err', 'clr.n384.vec_s', 'clr.n384.loop_s', 'clr.n384.speedup', 'clr.n384.frac_step',
    'clr.batch.vec_s', 'clr.batch.frac_step', 'share.conaug_clr',
    'loader.aug.img_s', 'loader.noaug.img_s', 'loader.official.abinet.step_s', 'loader.official.conclr.step_s',
    'loader.consumption.img_s', 'loader.core_share.img_s', 'loader.ratio', 'loader.workers_needed',
    'infer.b1.img_s', 'infer.b64.img_s', 'infer.ratio',
    'demo.b1.img_s', 'demo.b64.img_s', 'demo.ratio', 'demo.ort.b1.img_s', 'demo.ort.b64.img_s',
    *(f'learner.{tag}.{m}' for tag in ('abinet', 'conclr')
      for m in ('plain_ms', 'learner_ms', 'overhead_pct', 'loss_rel_diff', 'weight_max_diff')),
    'render.plain.img_s', 'render.scene.img_s', 'render.scene.core_share',
)


PRECISION_SECTIONS = ('train.', 'infer.', 'flops.matmul', 'loss.', 'loader.workers_needed')
# Rows only a CUDA run has (per precision, with the suffix): peak memory and the data-sheet utilisation.
CUDA_METRIC_KEYS = ('train.abinet.peak_gib', 'train.conclr.peak_gib', 'train.abinet.mfu_datasheet@bf16')


@dataclass
class Row:
    """One line of the table: a metric, its value, an optional target and the verdict."""

    key: str
    label: str
    value: float | None
    unit: str = ''
    target: str = ''
    status: str = ''
    note: str = ''


@dataclass
class Report:
    """Rows in print order; `metrics` maps each key to its value (None when skipped)."""

    rows: list[Row] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, label: str, value: float | None, unit: str = '', target: tuple[str, float] | None = None,
            note: str = '') -> float | None:
        """Record a metric; `target` is ('<=' | '<' | '>=', bound) and sets the PASS/FAIL verdict."""
        status, target_text = '', ''
        if target is not None:
            op, bound = target
            target_text = f'{op} {bound:g}'
            if value is None or not math.isfinite(value):
                status = 'SKIP' if value is None else 'FAIL'
            else:
                ok = {'<=': value <= bound, '<': value < bound, '>=': value >= bound}[op]
                status = 'PASS' if ok else 'FAIL'
        elif value is None:
            status = 'SKIP'
        self.rows.append(Row(key, label, None if value is None else float(value), unit, target_text, status, note))
        return value

    @property
    def metrics(self) -> dict[str, float | None]:
        """Metric key -> value."""
        return {r.key: r.value for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        """The JSON document: meta, metrics and rows."""
        return {'meta': self.meta, 'metrics': self.metrics, 'rows': [asdict(r) for r in self.rows]}

    def format(self) -> str:
        """The aligned text table."""
        header = ('metric', 'value', 'unit', 'target', 'result', 'note')
        lines = [[r.label, _fmt(r.value), r.unit, r.target, r.status, r.note] for r in self.rows]
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
        widths[-1] = len(header[-1])
        out = ['  '.join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
               '  '.join('-' * w for w in widths)]
        out += ['  '.join(c.ljust(w) if i < 5 else c for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                for line in lines]
        return '\n'.join(out)


def _fmt(value: float | None) -> str:
    if value is None:
        return 'skipped'
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f'{value:.4g}'
    return f'{value:.3e}'
