"""Benchmark harness, learner section: a training step through fastai's Learner against the plain PyTorch loop.

Timings are noise on a shared machine, so the measured overhead is only held to a wide, sane bound. What is
checked is that the Learner and the plain loop do the same work (equal losses and weights after the same steps,
within the stated tolerances), that the section reports those numbers, and that its rows fail when they differ.
"""

import math

import pytest
import torch

from configuration import Config
from tools.benchmark import batches, cli, learner
from tools.benchmark.report import METRIC_KEYS
from training.builders import build_model
from utils import CharsetMapper

CPU = torch.device('cpu')


def tiny_setup(name: str, batch: int = 2) -> tuple[Config, tuple[torch.Tensor, ...]]:
    """The tiny config of `name` and a fixed training batch for it."""
    config = batches.model_config(name, 'tiny')
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    h, w = config.dataset_image_height, config.dataset_image_width
    return config, batches.make_batch(batch, charset, h, w, CPU, seed=9)


# A sane bound on the tiny model's measured overhead, wide for a shared 2-core machine: the Learner neither does
# the step's work twice over (+200 % is three plain steps) nor skips part of it (-60 %).
OVERHEAD_BOUNDS = (-60.0, 200.0)


def test_learner_section_reports_equal_work_and_a_sane_overhead():
    report = cli.run(['--quick', '--sections', 'learner', '--steps', '4', '--learner_rounds', '3'])
    rows = {r.key: r for r in report.rows}
    metrics = ('plain_ms', 'learner_ms', 'overhead_pct', 'loss_rel_diff', 'weight_max_diff')
    assert list(rows) == [f'learner.{tag}.{m}' for tag in ('abinet', 'conclr') for m in metrics]
    assert set(rows) <= set(METRIC_KEYS)
    for tag in ('abinet', 'conclr'):
        plain, fitted = rows[f'learner.{tag}.plain_ms'].value, rows[f'learner.{tag}.learner_ms'].value
        overhead = rows[f'learner.{tag}.overhead_pct']
        assert plain > 0 and fitted > 0 and math.isfinite(plain) and math.isfinite(fitted)
        assert overhead.value == pytest.approx((fitted - plain) / plain * 100)
        assert OVERHEAD_BOUNDS[0] < overhead.value < OVERHEAD_BOUNDS[1], (tag, plain, fitted)
        assert overhead.status == ''  # the 3 % target is for the quarter size, not the tiny model
        assert 'median of 12 steps, 3 alternating rounds' in rows[f'learner.{tag}.plain_ms'].note
        # the same work: equal losses and weights within the stated tolerances, and the rows say so
        loss, weights = rows[f'learner.{tag}.loss_rel_diff'], rows[f'learner.{tag}.weight_max_diff']
        assert 0 <= loss.value <= learner.LEARNER_LOSS_AGREEMENT
        assert loss.target == f'<= {learner.LEARNER_LOSS_AGREEMENT:g}'
        assert 0 <= weights.value <= learner.LEARNER_WEIGHT_AGREEMENT
        assert weights.target == f'<= {learner.LEARNER_WEIGHT_AGREEMENT:g}'
        assert loss.status == weights.status == 'PASS'
        learner_loss, plain_loss = (float(v) for v in loss.note.split(': ')[-1].split(' vs '))
        assert math.isfinite(plain_loss)
        assert learner_loss == pytest.approx(plain_loss, rel=learner.LEARNER_LOSS_AGREEMENT)


def test_agreement_rows_fail_when_the_two_paths_differ(monkeypatch):
    """The rows the section reports are the agreement's own numbers: a Learner whose weights and loss drift from
    the plain loop's fails both."""
    monkeypatch.setattr(learner, 'time_learner', lambda s, name, steps: ([0.010, 0.010], [0.011, 0.011]))
    drifted = learner.LearnerAgreement([1.0, 0.9], [1.0, 0.99], 0.5, 1.0)
    monkeypatch.setattr(learner, 'learner_agreement', lambda *a, **k: drifted)
    rows = {r.key: r for r in cli.run(['--quick', '--sections', 'learner']).rows}
    for tag in ('abinet', 'conclr'):
        assert rows[f'learner.{tag}.overhead_pct'].value == pytest.approx(10.0)
        assert rows[f'learner.{tag}.loss_rel_diff'].value == pytest.approx(0.1)
        assert rows[f'learner.{tag}.weight_max_diff'].value == 0.5
        assert rows[f'learner.{tag}.loss_rel_diff'].status == rows[f'learner.{tag}.weight_max_diff'].status == 'FAIL'


def test_quarter_size_overhead_row_carries_the_target(monkeypatch):
    monkeypatch.setattr(learner, 'time_learner', lambda s, name, steps: ([0.100, 0.100], [0.102, 0.104]))
    agreed = learner.LearnerAgreement([1.0, 0.9], [1.0, 0.9], 0.0, 1e-4)
    monkeypatch.setattr(learner, 'learner_agreement', lambda *a, **k: agreed)
    report = cli.run(['--quick', '--size', 'quarter', '--sections', 'learner'])
    rows = {r.key: r for r in report.rows}
    assert rows['learner.abinet.overhead_pct'].value == pytest.approx(3.0)
    assert rows['learner.abinet.overhead_pct'].target == '<= 3'
    assert rows['learner.abinet.overhead_pct'].status == 'PASS'


def test_fixed_batch_loader_yields_the_same_batch_every_step():
    images, labels, lengths = tiny_setup(batches.ABINET, batch=3)[1]
    loader = torch.utils.data.DataLoader(learner.FixedBatchSet((images, labels, lengths), repeats=4), batch_size=3)
    steps = list(loader)
    assert len(steps) == 4
    for x, (y, n) in steps:
        assert torch.equal(x, images) and torch.equal(y, labels) and torch.equal(n, lengths)


@pytest.mark.parametrize('name', [batches.ABINET, batches.CONCLR])
def test_learner_and_plain_loop_do_the_same_work(name):
    config, batch = tiny_setup(name)
    agree = learner.learner_agreement(config, batch, CPU, steps=2)
    assert len(agree.plain_losses) == len(agree.learner_losses) == 2
    assert agree.weight_change > 1e-6  # both steps trained
    assert agree.weight_max_diff <= 1e-5
    assert agree.learner_losses == pytest.approx(agree.plain_losses, rel=1e-6)


def test_agreement_check_detects_different_work(monkeypatch):
    make_train_step = batches.make_train_step

    def tenfold_lr(model, config, *args, **kwargs):  # the plain loop's optimiser at 10 x the Learner's lr
        lr = config.optimizer_lr
        config.optimizer_lr = 10 * lr
        try:
            return make_train_step(model, config, *args, **kwargs)
        finally:
            config.optimizer_lr = lr

    monkeypatch.setattr(learner, 'make_train_step', tenfold_lr)
    config, batch = tiny_setup(batches.ABINET)
    agree = learner.learner_agreement(config, batch, CPU, steps=2)
    assert agree.weight_max_diff > 1e-5
    assert agree.loss_rel_diff > 0


def test_dropout_is_disabled_everywhere():
    config = batches.model_config(batches.CONCLR, 'tiny')
    model = learner.disable_dropout(build_model(config))
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    attentions = [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert dropouts and attentions
    assert all(m.p == 0 for m in dropouts) and all(m.dropout == 0 for m in attentions)
