"""The lr schedule: ABINet's phases from the global iteration, the optional linear warm-up, and the end of training
after the last phase."""

from __future__ import annotations

import pytest

from callbacks.lr_schedule import lr_at, lr_phase, schedule_end


def test_schedule_end_only_when_the_phases_end_before_training_epochs():
    assert schedule_end([6, 2], 100, 10) == 800  # 8 of 10 epochs of 100 iterations
    assert schedule_end([1, 0.5], 20, 5) == 30
    assert schedule_end([6, 2], 100, 8) is None  # the run ends with the schedule anyway
    assert schedule_end([6, 2], 100, 4) is None  # training.epochs ends it first, as upstream
    assert schedule_end([], 100, 4) is None  # no phases: one constant lr


def test_lr_at_phase_boundaries():
    # 10 iterations per epoch, periods [2, 1]: 0-based iterations 0..19 at lr, 20..29 at lr/10
    lrs = [lr_at(i, 10, 1.0, [2, 1], 0.1) for i in range(30)]
    assert lrs[:20] == [1.0] * 20 and lrs[20:] == pytest.approx([0.1] * 10)


@pytest.mark.parametrize('iteration, expected', [(0, 0), (59, 0), (60, 1), (79, 1), (80, 1), (10_000, 1)])
def test_phase_boundaries_follow_periods_in_epochs(iteration, expected):
    # 10 iterations per epoch, periods [6, 2]: iterations 0..59 in phase 0, 60.. in phase 1, and the last continues.
    assert lr_phase(iteration, 10, [6, 2]) == expected


def test_warmup_ramps_linearly_then_holds():
    # warm-up over 4 iterations: 1/4, 2/4, 3/4, 4/4 of the base lr, then the base lr.
    lrs = [lr_at(i, 100, 2e-3, [10], 0.1, warmup_iters=4) for i in range(6)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3])


def test_warmup_scales_the_phase_value():
    # a warm-up longer than the first phase multiplies the later phase's lr until it ends
    assert lr_at(15, 10, 1e-3, [1, 1], 0.1, warmup_iters=20) == pytest.approx(1e-4 * 16 / 20)
