import pytest

from callbacks.lr_schedule import lr_at, schedule_end


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
