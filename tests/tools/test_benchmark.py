"""Benchmark harness: the quick mode reports every metric; the loop references equal the vectorised code.

No timing is asserted anywhere: the machine is shared and timings are noise here.
"""

import json
import math
import os

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from callbacks.conaug import conaug, draw_conaug_params
from losses.contrastive import contrastive_loss
from tools import benchmark as B

MPL_FONT = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'fonts', 'ttf', 'DejaVuSans.ttf')


def onehot_batch(words, t_slots, num_classes):
    """N x T x C one-hot targets and lengths (chars + 1) of words given as lists of class indices."""
    y = torch.zeros(len(words), t_slots, num_classes)
    for i, w in enumerate(words):
        seq = list(w) + [0] * (t_slots - len(w))
        y[i, torch.arange(t_slots), torch.tensor(seq)] = 1.0
    return y, torch.tensor([len(w) + 1 for w in words])


# ------------------------------------------------------------------------------------ loop references


def test_conaug_loop_hand_made():
    y, lengths = onehot_batch([[1, 2], [3], [4, 1, 2, 3]], t_slots=6, num_classes=5)
    x = torch.arange(3 * 3 * 2 * 4, dtype=torch.float32).view(3, 3, 2, 4)
    perm, left = torch.tensor([1, 2, 0]), torch.tensor([False, True, False])
    images, labels, out_lengths, valid = B.conaug_loop(x, y, lengths, perm, left)
    # sample 0: [0 | 1] = "ab" + "c"; sample 1: [2 | 1] = "dabc" + "c"; sample 2: [2 | 0] = "dabc" + "ab" (6 > 5)
    assert labels.argmax(-1).tolist() == [[1, 2, 3, 0, 0, 0], [4, 1, 2, 3, 3, 0], [4, 1, 2, 3, 1, 2]]
    assert out_lengths.tolist() == [4, 6, 6] and valid.tolist() == [True, True, False]
    # bilinear 2W -> W with align_corners=False is the mean of column pairs: [x0 | x1] -> columns 0.5, 2.5 of each
    expected = torch.cat([(x[0, ..., 0::2] + x[0, ..., 1::2]) / 2, (x[1, ..., 0::2] + x[1, ..., 1::2]) / 2], dim=-1)
    assert torch.allclose(images[0], expected)


@pytest.mark.parametrize('side', ['fixed', 'sample'])
def test_conaug_loop_equals_vectorised(side):
    gen = torch.Generator().manual_seed(5)
    n, t_slots, c = 12, 8, 6
    words = [torch.randint(1, c, (int(k),), generator=gen).tolist() for k in torch.randint(1, 6, (n,), generator=gen)]
    y, lengths = onehot_batch(words, t_slots, c)
    x = torch.randn(n, 3, 4, 10, generator=gen)
    perm1, left1, perm2, left2 = draw_conaug_params(n, side, generator=gen)
    valid = []
    for perm, left in ((perm1, left1), (perm2, left2)):
        vec = conaug(x, y, lengths, perm, left)
        ref = B.conaug_loop(x, y, lengths, perm, left)
        assert torch.allclose(vec[0], ref[0], atol=1e-6)
        for a, b in zip(vec[1:], ref[1:]):
            assert torch.equal(a, b)
        valid += ref[3].tolist()
    assert not all(valid)  # some pairs are overlong (more than 7 characters), so that case is compared too


def test_contrastive_loop_analytic():
    # view 1 "ab", view 2 "a": anchors are the two a's (b has no positive); s(a, a') = 1/tau, s(a, b) = 0
    tau = 2.0
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    z1 = torch.stack([e1, e2, e2]).unsqueeze(0)
    z2 = torch.stack([e1, e2, e2]).unsqueeze(0)
    labels1, labels2 = torch.tensor([[1, 2, 0]]), torch.tensor([[1, 0, 0]])
    l1, l2 = torch.tensor([3]), torch.tensor([2])
    expected = 2 * (math.log(math.exp(1 / tau) + 1) - 1 / tau)
    for fn in (B.contrastive_loss_loop, contrastive_loss):
        assert fn(z1, z2, labels1, labels2, l1, l2, tau=tau).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize('include_eos', [False, True])
def test_contrastive_loop_equals_vectorised_value_and_gradient(include_eos):
    inputs = B.contrastive_inputs(6, 10, 8, 7, torch.device('cpu'), seed=3, max_len=7)
    z1, z2 = inputs[0], inputs[1]
    assert not inputs[6].all()  # some pairs are overlong and must be left out by both
    vec = contrastive_loss(*inputs[:6], tau=0.7, include_eos=include_eos, valid=inputs[6])
    ref = B.contrastive_loss_loop(*inputs[:6], tau=0.7, include_eos=include_eos, valid=inputs[6])
    assert vec.item() == pytest.approx(ref.item(), rel=1e-4)
    for a, b in zip(torch.autograd.grad(vec, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_contrastive_loop_no_valid_pair_is_zero_with_gradient():
    z = F.normalize(torch.randn(2, 4, 3), dim=-1).requires_grad_(True)
    labels = torch.ones(2, 4, dtype=torch.long)
    loss = B.contrastive_loss_loop(z, z, labels, labels, torch.tensor([3, 3]), torch.tensor([3, 3]),
                                   valid=torch.tensor([False, False]))
    loss.backward()
    assert loss.item() == 0.0 and z.grad is not None


def test_checks_report_agreement():
    ok, worst = B.contrastive_check(torch.device('cpu'), n=4, t_slots=8, e=8)
    assert ok and worst <= 1e-4
    charset_batch = B.make_batch(6, B.CharsetMapper('data/charset_36.txt', 25), 4, 8, torch.device('cpu'))
    assert B.conaug_check(*charset_batch)


# ------------------------------------------------------------------------------------ report


def test_report_verdicts():
    r = B.Report()
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


def test_quick_mode_reports_every_metric(tmp_path, capsys):
    out = tmp_path / 'results.json'
    assert B.main(['--quick', '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    metrics = doc['metrics']
    assert set(B.METRIC_KEYS) <= set(metrics)
    demo_skipped = B._demo_main() is None or not (B.DEMO_SAMPLES.is_dir() and any(B.DEMO_SAMPLES.glob('*.png')))
    for key in B.METRIC_KEYS:
        value = metrics[key]
        if key.startswith('demo.') and demo_skipped:  # no demo.py, or ../shared/samples absent
            assert value is None
            continue
        assert value is not None and math.isfinite(value), key
    for row in doc['rows']:
        assert row['status'] in ('', 'PASS', 'FAIL', 'SKIP')
        assert row['label'] in printed
    assert metrics['conaug.equal'] == 1.0 and metrics['clr.equal'] == 1.0
    assert doc['meta']['quick'] and len(doc['meta']['load_average_start']) == 3


def test_demo_missing_gives_skipped_rows(monkeypatch):
    monkeypatch.setattr(B, '_demo_main', lambda: None)
    report = B.run(['--quick', '--sections', 'demo'])
    assert [r.key for r in report.rows] == ['demo.b1.img_s', 'demo.b64.img_s', 'demo.ratio']
    assert all(r.value is None and r.status == 'SKIP' and r.note == 'skipped: demo.py missing' for r in report.rows)


def test_loader_renders_a_synthetic_lmdb_when_none_is_found(tmp_path, monkeypatch):
    from tools import render_synthetic
    monkeypatch.setattr(render_synthetic, 'find_fonts', lambda *a, **k: [MPL_FONT])
    report = B.run(['--quick', '--sections', 'loader', '--lmdb', str(tmp_path / 'missing'), '--loader_samples', '3'])
    rows = {r.key: r for r in report.rows}
    assert 'synthetic LMDB' in rows['loader.aug.img_s'].note
    assert rows['loader.aug.img_s'].value > 0 and rows['loader.noaug.img_s'].value > 0
    assert rows['loader.ratio'].status in ('PASS', 'FAIL')


@pytest.mark.parametrize('name, count, expected', [('cpu', 0, 'cpu'), ('cuda', 2, 'cuda'), ('cuda:1', 2, 'cuda:1'),
                                                   ('auto', 0, 'cpu'), ('auto', 1, 'cuda')])
def test_device_flag_accepts_visible_devices(monkeypatch, name, count, expected):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: count > 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
    assert B.resolve_device(name) == torch.device(expected)


@pytest.mark.parametrize('name, count, message', [
    ('cuda:2', 2, 'only 2 CUDA device'), ('cuda:0', 0, 'no CUDA device'), ('cuda', 0, 'no CUDA device'),
    ('gpu', 1, 'expected cpu, cuda'), ('meta', 1, 'expected cpu, cuda')])
def test_device_flag_rejects_absent_devices_with_one_line(monkeypatch, capsys, name, count, message):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: count > 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
    with pytest.raises(B.BenchmarkError, match=message):
        B.resolve_device(name)
    assert B.main(['--quick', '--device', name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].replace("'", '').startswith(f'error: --device {name}:')
