"""experiments/oov_study/report: the 95 % t interval of paired differences and the seeds that went each way, against a
hand-computed example."""

import math

import pytest

from experiments.oov_study import report


def test_the_t_interval_of_a_hand_computed_example():
    low, high = report.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) = 4.303, sd = 1
    assert low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert report.t_interval([5.0]) is None
    records = {s: {'v': v} for s, v in enumerate([0.0, 0.0, 0.0, 0.0])}
    other = {s: {'v': v} for s, v in enumerate([1.0, 2.0, 3.0, 0.0])}
    diff = report.paired(records, other, lambda r: r['v'])
    assert (diff['up'], diff['down'], diff['even']) == (3, 0, 1)
    assert diff['mean'] == pytest.approx(1.5)
    half = 3.182446305284263 * diff['sd'] / 2  # t(0.975, 3), n = 4
    assert diff['ci95'] == pytest.approx([1.5 - half, 1.5 + half])
