"""recipe_sweep/table.py reads eval/cwr back from TensorBoard events and finds the first iteration over a bar."""

from __future__ import annotations

import pytest
from tensorboardX import SummaryWriter

from experiments.recipe_sweep.table import eval_curve, first_reaching, summarise


def _write(folder, points, suffix=''):
    writer = SummaryWriter(str(folder), filename_suffix=suffix)
    for step, value in points:
        writer.add_scalar('eval/cwr', value, step)
        writer.add_scalar('eval/ccr', 1.0, step)  # another tag must not leak in
    writer.close()


def test_curve_round_trips_and_a_resumed_run_keeps_the_last_value(tmp_path):
    _write(tmp_path, [(100, 0.0), (200, 0.05)])
    _write(tmp_path, [(200, 0.12), (300, 0.6)], '.resumed')  # a resumed run writes a second events file
    curve = eval_curve(tmp_path)
    assert [step for step, _ in curve] == [100, 200, 300]
    assert [value for _, value in curve] == pytest.approx([0.0, 0.12, 0.6])


def test_first_reaching_and_the_table_row(tmp_path):
    curve = [(100, 0.0), (200, 0.12), (300, 0.6), (400, 0.55)]
    assert first_reaching(curve, 0.1) == 200 and first_reaching(curve, 0.5) == 300
    assert first_reaching(curve, 0.7) is None
    _write(tmp_path, curve)
    row = summarise(tmp_path, [0.1, 0.7], step_seconds=0.6)
    assert row == f'| {tmp_path.name} | 200 (2.0 min) | >400 | 60.0 % at 300 | 400 |'
