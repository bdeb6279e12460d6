"""The lr schedule: ABINet's phases from the global iteration, and the optional linear warm-up."""

from __future__ import annotations

import pytest

from callbacks.lr_schedule import lr_at, lr_phase


@pytest.mark.parametrize('iteration, expected', [(0, 0), (59, 0), (60, 1), (79, 1), (80, 1), (10_000, 1)])
def test_phase_boundaries_follow_periods_in_epochs(iteration, expected):
    # 10 iterations per epoch, periods [6, 2]: iterations 0..59 in phase 0, 60.. in phase 1, and the last continues.
    assert lr_phase(iteration, 10, [6, 2]) == expected


def test_lr_is_piecewise_constant_without_warmup():
    assert lr_at(0, 10, 1e-3, [6, 2], 0.1) == pytest.approx(1e-3)
    assert lr_at(65, 10, 1e-3, [6, 2], 0.1) == pytest.approx(1e-4)


def test_warmup_ramps_linearly_then_holds():
    # warm-up over 4 iterations: 1/4, 2/4, 3/4, 4/4 of the base lr, then the base lr.
    lrs = [lr_at(i, 100, 2e-3, [10], 0.1, warmup_iters=4) for i in range(6)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3])


def test_warmup_scales_the_phase_value():
    # a warm-up longer than the first phase multiplies the later phase's lr until it ends
    assert lr_at(15, 10, 1e-3, [1, 1], 0.1, warmup_iters=20) == pytest.approx(1e-4 * 16 / 20)
