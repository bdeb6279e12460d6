"""Benchmark harness: the quick mode reports every metric with the verdict its value earns (SKIP only where a row
is skipped), its correctness checks pass, and a verdict follows the value it is given.

No measured timing is asserted against a target: the machine is shared and timings are noise here; verdicts of
timing rows are checked against their own values, and against fixed times where the test sets them.
"""

import copy
import importlib.util
import json
import math
import operator
import os
import sys

import matplotlib
import pytest
import torch

from callbacks.conaug import conaug
from tools.benchmark import batches, checks, cli, inference_sections, settings, timing, training_sections
from tools.benchmark.report import METRIC_KEYS, Report
from utils import CharsetMapper

MPL_FONT = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'fonts', 'ttf', 'DejaVuSans.ttf')


def test_checks_report_agreement():
    ok, worst = checks.contrastive_check(torch.device('cpu'), n=4, t_slots=8, e=8)
    assert ok and worst <= 1e-4
    charset_batch = batches.make_batch(6, CharsetMapper('data/charset_36.txt', 25), 4, 8, torch.device('cpu'))
    assert checks.conaug_check(*charset_batch)


# ------------------------------------------------------------------------------------ report


def test_report_verdicts():
    r = Report()
    r.add('a', 'a', 3.0, 'x', ('<=', 3.15))
    r.add('b', 'b', 3.2, 'x', ('<=', 3.15))
    r.add('c', 'c', 0.02, 'frac', ('<', 0.02))
    r.add('d', 'd', None, 'x', ('>=', 3), note='skipped: demo.py missing')
    r.add('e', 'e', float('nan'), 'x', ('>=', 3))
    r.add('f', 'f', 1.5)
    assert [row.status for row in r.rows] == ['PASS', 'FAIL', 'FAIL', 'SKIP', 'FAIL', '']
    table = r.format()
    assert 'skipped: demo.py missing' in table and table.count('\n') == len(r.rows) + 1


# ------------------------------------------------------------------------------------ quick mode end to end


# Rows whose verdict is a correctness check, not a timing: the quick run must PASS every one of them.
CORRECTNESS_KEYS = ('conaug.equal', 'clr.equal', 'clr.max_rel_err', 'learner.abinet.loss_rel_diff',
                    'learner.abinet.weight_max_diff', 'learner.conclr.loss_rel_diff', 'learner.conclr.weight_max_diff')
OPS = {'<=': operator.le, '<': operator.lt, '>=': operator.ge}


def verdict(value, target):
    """The status a row must carry: its value against its target text ('>= 3'), SKIP when it has no value."""
    if value is None:
        return 'SKIP'
    if not target:
        return ''
    op, bound = target.split()
    return 'PASS' if math.isfinite(value) and OPS[op](value, float(bound)) else 'FAIL'


def expected_skips():
    """Keys the quick run can only skip here: the demo rows without demo.py or its sample images, the ONNX Runtime
    rows without onnxruntime."""
    has_ort = importlib.util.find_spec('onnxruntime') is not None
    samples = settings.DEMO_SAMPLES
    demo_skipped = inference_sections._demo_main() is None or not (samples.is_dir() and any(samples.glob('*.png')))
    skips = {'demo.b1.img_s', 'demo.b64.img_s', 'demo.ratio'} if demo_skipped else set()
    if demo_skipped or not has_ort:
        skips |= {'demo.ort.b1.img_s', 'demo.ort.b64.img_s'}
    return skips | (set() if has_ort else {'onnx.skipped'}), has_ort


def test_quick_mode_reports_every_metric_with_the_verdict_its_value_earns(tmp_path, capsys):
    out = tmp_path / 'results.json'
    assert cli.main(['--quick', '--output', str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    doc = json.loads(out.read_text())
    metrics, rows = doc['metrics'], doc['rows']
    assert set(METRIC_KEYS) <= set(metrics)
    skips, has_ort = expected_skips()
    # SKIP exactly where a row was skipped, with its reason; every other row has a finite value
    assert {r['key'] for r in rows if r['status'] == 'SKIP'} == skips
    for row in rows:
        if row['key'] in skips:
            assert row['value'] is None and row['note'].startswith('skipped: '), row
        else:
            assert row['value'] is not None and math.isfinite(row['value']), row
        # PASS / FAIL is the value against the target; rows without a target carry no verdict
        assert row['status'] == verdict(row['value'], row['target']), row
        line = [x for x in printed if x.startswith(row['label'] + ' ')]
        assert line and (row['status'] in line[0].split() if row['status'] else True), row['label']
    # the correctness checks are not timings: they pass on any machine
    correct = CORRECTNESS_KEYS + (('onnx.tiny.logits_rel_diff',) if has_ort else ())
    assert {r['key']: r['status'] for r in rows if r['key'] in correct} == {k: 'PASS' for k in correct}
    assert metrics['conaug.equal'] == 1.0 and metrics['clr.equal'] == 1.0
    assert metrics['train.ratio'] == pytest.approx(metrics['train.conclr.step_s'] / metrics['train.abinet.step_s'])
    counts = {s: sum(r['status'] == s for r in rows) for s in ('PASS', 'FAIL', 'SKIP')}
    assert f"targets: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP" in printed
    assert doc['meta']['quick'] and len(doc['meta']['load_average_start']) == 3


@pytest.mark.parametrize('large_s, status', [(0.004, 'PASS'), (0.02, 'FAIL')])
def test_infer_ratio_verdict_follows_the_measured_times(monkeypatch, large_s, status):
    """Batch 1 in 10 ms and batch 4 in 4 ms is 10 x the images per second (>= 3: PASS); in 20 ms, 2 x (FAIL)."""
    monkeypatch.setattr(inference_sections, 'interleaved_medians', lambda fns, *a, **k: {1: 0.01, 4: large_s})
    rows = {r.key: r for r in cli.run(['--quick', '--sections', 'infer', '--infer_batch', '4']).rows}
    assert rows['infer.b1.img_s'].value == pytest.approx(100.0)
    assert rows['infer.b64.img_s'].value == pytest.approx(4 / large_s)
    assert rows['infer.ratio'].value == pytest.approx(0.04 / large_s)
    assert (rows['infer.ratio'].target, rows['infer.ratio'].status) == ('>= 3', status)


def test_a_conaug_that_differs_from_the_loop_reference_fails_its_row(monkeypatch):
    def off_by_one(images, labels, lengths, perm, left):  # lengths one too long
        x, y, n, v = conaug(images, labels, lengths, perm, left)
        return x, y, n + 1, v

    monkeypatch.setattr(checks, 'conaug', off_by_one)
    rows = {r.key: r for r in cli.run(['--quick', '--sections', 'conaug']).rows}
    assert (rows['conaug.equal'].value, rows['conaug.equal'].status) == (0.0, 'FAIL')


def test_demo_missing_gives_skipped_rows(monkeypatch):
    monkeypatch.setattr(inference_sections, '_demo_main', lambda: None)
    report = cli.run(['--quick', '--sections', 'demo'])
    assert [r.key for r in report.rows] == ['demo.b1.img_s', 'demo.b64.img_s', 'demo.ratio', 'demo.ort.b1.img_s',
                                            'demo.ort.b64.img_s']
    assert all(r.value is None and r.status == 'SKIP' and r.note == 'skipped: demo.py missing' for r in report.rows)


def test_loader_renders_a_synthetic_lmdb_when_none_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(training_sections, 'find_fonts', lambda *a, **k: [MPL_FONT])
    report = cli.run(['--quick', '--sections', 'loader', '--lmdb', str(tmp_path / 'missing'), '--loader_samples', '3'])
    rows = {r.key: r for r in report.rows}
    assert 'synthetic LMDB' in rows['loader.aug.img_s'].note
    assert rows['loader.aug.img_s'].value > 0 and rows['loader.noaug.img_s'].value > 0
    ratio = rows['loader.ratio']
    assert ratio.value == pytest.approx(rows['loader.aug.img_s'].value / rows['loader.core_share.img_s'].value)
    assert ratio.status == ('PASS' if ratio.value >= 1 else 'FAIL')


@pytest.mark.parametrize('name, count, expected', [('cpu', 0, 'cpu'), ('cuda', 2, 'cuda'), ('cuda:1', 2, 'cuda:1'),
                                                   ('auto', 0, 'cpu'), ('auto', 1, 'cuda')])
def test_device_flag_accepts_visible_devices(monkeypatch, name, count, expected):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: count > 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
    assert settings.resolve_device(name) == torch.device(expected)


@pytest.mark.parametrize('name, count, message', [
    ('cuda:2', 2, 'only 2 CUDA device'), ('cuda:0', 0, 'no CUDA device'), ('cuda', 0, 'no CUDA device'),
    ('gpu', 1, 'expected cpu, cuda'), ('meta', 1, 'expected cpu, cuda')])
def test_device_flag_rejects_absent_devices_with_one_line(monkeypatch, capsys, name, count, message):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: count > 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
    with pytest.raises(settings.BenchmarkError, match=message):
        settings.resolve_device(name)
    assert cli.main(['--quick', '--device', name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].replace("'", '').startswith(f'error: --device {name}:')


def test_alternating_rounds_reverse_the_order_every_other_round_and_keep_each_timers_times():
    calls = []

    def timer(name, value):
        def run():
            calls.append(name)
            return [value * len(calls)]
        return run

    times = timing.alternating_rounds({'a': timer('a', 1.0), 'b': timer('b', 10.0)}, 3)
    assert calls == ['a', 'b', 'b', 'a', 'a', 'b']
    assert times == {'a': [1.0, 4.0, 5.0], 'b': [20.0, 30.0, 60.0]}


# ------------------------------------------------------------------------------------ onnx section


def test_onnx_section_rows_with_an_official_model(monkeypatch):
    """PyTorch, the ORT variants and (with --official) official ABINet are timed at each batch; the float32 graph
    matches PyTorch; the profile's shares add up to 100 %."""
    seen = []

    def official(s, model, config):  # stands in for tools.official_abinet's model with the same weights
        seen.append(s.official_root)
        return copy.deepcopy(model)

    monkeypatch.setattr(inference_sections, 'official_eager', official)
    report = cli.run(['--quick', '--sections', 'onnx', '--official', 'checkout', '--onnx_profile'])
    metrics = report.metrics
    assert seen == ['checkout']
    assert metrics['onnx.tiny.logits_rel_diff'] <= 1e-4
    for b in (1, 4):
        for name in ('torch', 'ort', 'ort_default', 'ort_extended', 'ort_int8', 'abinet'):
            value = metrics[f'onnx.tiny.b{b}.{name}.img_s']
            assert value is not None and math.isfinite(value) and value > 0, (b, name)
        assert metrics[f'onnx.tiny.b{b}.ort_vs_torch'] > 0
    rows = {r.key: r for r in report.rows}
    assert rows['onnx.tiny.b1.ort_vs_abinet'].target == '>= 2' and rows['onnx.tiny.b4.ort_vs_abinet'].target == ''
    shares = [v for k, v in metrics.items() if k.startswith('onnx.tiny.b4.profile.')]
    assert len(shares) >= 2 and sum(shares) == pytest.approx(100.0)


def test_onnx_section_without_onnxruntime_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    report = cli.run(['--quick', '--sections', 'onnx'])
    assert [(r.key, r.status, r.note) for r in report.rows] == [
        ('onnx.skipped', 'SKIP', 'skipped: onnxruntime is not installed')]
