"""End to end through main.py: short training runs whose losses fall, the test-phase table, CLI errors."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main
from checkpoint import load_checkpoint
from dataset import open_lmdb
from stop_signal import Interrupted, StopSignal
from tests.helpers import BENCHMARKS, render_lmdb, tiny_config
from utils import Config


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('lmdb')
    return render_lmdb(root / 'train', 160, seed=1), render_lmdb(root / 'test', 24, seed=2)


def _first_last(history, key):
    return history[0][key], history[-1][key]


def test_vision_training_lowers_the_loss_and_leaves_its_files(tmp_path, lmdbs):
    train_root, test_root = lmdbs
    config = Config(tiny_config(tmp_path, train_root, [test_root]))
    callback = main.train(config, torch.device('cpu'))
    first, last = _first_last(callback.train_history, 'vision_loss')
    assert last < first - 0.3, callback.train_history
    assert callback.iteration == 40
    workdir = config.workdir
    assert (workdir / 'train.txt').read_text().count('eval loss') == 2  # eval_iters 20 of 40
    events = list(workdir.glob('events.out.tfevents.*'))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]), size_guidance={'images': 0, 'scalars': 0})
    accumulator.Reload()
    scalars = set(accumulator.Tags()['scalars'])
    assert {'train/loss', 'train/vision_loss', 'train/lr', 'eval/loss', 'eval/cwr', 'eval/ccr', 'eval/ned'} <= scalars
    assert [e.step for e in accumulator.Scalars('eval/cwr')] == [20, 40]
    assert 'eval/attention' in accumulator.Tags()['images']
    assert len(accumulator.Images('eval/attention')) == 2
    state = load_checkpoint(workdir / 'best-run.pth')
    assert set(state) >= {'model', 'opt', 'iteration', 'epoch', 'best_cwr'}
    periodic = sorted(p.name for p in workdir.glob('run_*.pth'))
    assert len(periodic) == 4 and periodic[-1].endswith('_40.pth')


def test_lr_phases_follow_periods(tmp_path, lmdbs):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=30)
    text = path.read_text().replace('lr: 0.003', 'lr: 0.001\n  scheduler:\n    periods: [1, 1]\n    gamma: 0.1')
    path.write_text(text)
    config = Config(path)
    callback = main.train(config, torch.device('cpu'))
    # 160 samples / batch 8 = 20 iterations per epoch: iterations 1..20 at 1e-3, 21..30 at 1e-4.
    lrs = [line for line in (config.workdir / 'train.txt').read_text().splitlines() if 'lr = ' in line]
    assert 'lr = 1.00e-03' in lrs[0] and 'lr = 1.00e-04' in lrs[-1]
    assert callback.iteration == 30


def test_conclr_training_lowers_recognition_and_contrastive_loss(tmp_path, lmdbs):
    # Words of one length keep the contrastive loss (a sum over the characters of a pair) comparable between
    # batches. It sits at its collapse value (every glimpse alike) until attention tells positions apart, so
    # a high lr and alpha 1 make it leave that plateau within a hundred iterations of the tiny model.
    train_root = render_lmdb(tmp_path / 'train4', 160, seed=4, words=['tree', 'ab12', 'quiz', 'lamp', 'ring', 'cats'])
    _, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], conclr=True, tau=0.5, alpha=1.0, max_iters=100, show_iters=20,
                       eval_iters=100)
    path.write_text(path.read_text().replace('lr: 0.003', 'lr: 0.01'))
    config = Config(path)
    callback = main.train(config, torch.device('cpu'))
    history = callback.train_history
    for key in ('rec_loss', 'clr_loss'):
        first, last = _first_last(history, key)
        assert last < first, (key, history)
    assert set(history[0]) >= {'vision_loss', 'vision_aug1_loss', 'vision_aug2_loss', 'rec_loss', 'clr_loss',
                               'invalid_rate'}
    assert all(h['invalid_rate'] == 0.0 for h in history)  # 4 + 4 characters fit max_length 12
    state = load_checkpoint(config.workdir / 'best-run.pth')
    assert any(k.startswith('projection_head.') for k in state['model'])


def test_test_phase_prints_and_writes_the_table(tmp_path, lmdbs, capsys):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=10)
    config = Config(path)
    main.train(config, torch.device('cpu'))
    second = render_lmdb(tmp_path / 'second', 10, seed=3, words=['Hello!', 'a-b', '---'])
    status = main.main(['--config', str(path), '--phase', 'test', '--checkpoint', str(config.workdir / 'best-run.pth'),
                        '--test_root', str(test_root), str(second), '--image_only'])
    assert status == 0
    out = capsys.readouterr().out
    for column in ('dataset', 'samples', 'left out', 'cwr', 'ccr', 'mean ned', '1-ned', 'ted', 'ted/w', 'eval loss'):
        assert column in out
    rows = list(csv.DictReader(open(config.workdir / 'test_results.csv')))
    assert [r['dataset'] for r in rows] == ['test', 'second', 'all', 'average']
    by_name = {r['dataset']: r for r in rows}
    # 10 samples cycling 'Hello!', 'a-b', '---': '---' (3 of them) cleans to an empty label, left out and
    # counted; 'Hello!' -> 'hello' (4), 'a-b' -> 'ab' (3).
    assert by_name['second']['left out'] == '3' and by_name['second']['samples'] == '7'
    assert by_name['all']['samples'] == '31'
    assert float(by_name['average']['cwr']) == pytest.approx(
        (float(by_name['test']['cwr']) + float(by_name['second']['cwr'])) / 2)
    all_cwr = (float(by_name['test']['cwr']) * 24 + float(by_name['second']['cwr']) * 7) / 31
    assert float(by_name['all']['cwr']) == pytest.approx(all_cwr)
    predictions = (config.workdir / 'predictions' / 'second.tsv').read_text().splitlines()
    assert predictions[0].split('\t') == ['index', 'ground_truth', 'prediction', 'confidence', 'correct']
    assert [line.split('\t')[1] for line in predictions[1:]] == ['hello', 'ab'] * 3 + ['hello']
    assert 'results' in (config.workdir / 'test.txt').read_text()
    assert not (config.workdir / 'attention').exists()


def test_test_phase_writes_attention_pictures_without_image_only(tmp_path, lmdbs):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=10)
    config = Config(path)
    main.train(config, torch.device('cpu'))
    assert main.main(['--config', str(path), '--phase', 'test', '--checkpoint',
                      str(config.workdir / 'best-run.pth')]) == 0
    assert len(list((config.workdir / 'attention' / 'test').glob('*.png'))) == 16


@pytest.mark.skipif(not (BENCHMARKS / 'CUTE80').exists(), reason='../shared/benchmarks is absent')
def test_test_phase_on_real_cute80(tmp_path, lmdbs):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=10)
    config = Config(path)
    main.train(config, torch.device('cpu'))
    assert main.main(['--config', str(path), '--phase', 'test', '--image_only', '--checkpoint',
                      str(config.workdir / 'best-run.pth'), '--test_root', str(BENCHMARKS / 'CUTE80')]) == 0
    row = next(csv.DictReader(open(config.workdir / 'test_results.csv')))
    # Independent count of the labels unusable under charset_36 and the tiny config's max_length (12).
    with open_lmdb(BENCHMARKS / 'CUTE80').begin() as txn:
        total = int(txn.get(b'num-samples'))
        cleaned = [re.sub('[^0-9a-z]', '', txn.get(b'label-%09d' % i).decode().lower()) for i in range(1, total + 1)]
    unusable = sum(not 0 < len(c) <= 12 for c in cleaned)
    assert total == 288 and unusable >= 1
    assert row['dataset'] == 'CUTE80' and row['samples'] == str(288 - unusable) and row['left out'] == str(unusable)
    assert math.isfinite(float(row['eval loss']))


@pytest.mark.parametrize('argv_extra, message', [
    (['--phase', 'test'], 'needs a checkpoint'),
    (['--model_eval', 'alignment'], 'only'),
    (['--test_root', '/nonexistent/lmdb', '--phase', 'test', '--checkpoint', 'x.pth'], '/nonexistent/lmdb'),
])
def test_cli_errors_are_one_line(tmp_path, lmdbs, capsys, argv_extra, message):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root])
    assert main.main(['--config', str(path), *argv_extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and message in err and len(err.splitlines()) == 1


def test_missing_training_root_fails_before_training(tmp_path, lmdbs, capsys):
    _, test_root = lmdbs
    path = tiny_config(tmp_path, tmp_path / 'no_such_lmdb', [test_root])
    assert main.main(['--config', str(path)]) == 2
    assert 'no_such_lmdb' in capsys.readouterr().err
    assert not list((tmp_path / 'workdir' / 'run').glob('*.pth'))


def test_checkpoint_that_does_not_fit_is_an_error(tmp_path, lmdbs, capsys):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=10)
    config = Config(path)
    main.train(config, torch.device('cpu'))
    other = path.read_text().replace('d_model: 16', 'd_model: 8').replace('- 16\n', '- 8\n')
    other_path = tmp_path / 'other.yaml'
    other_path.write_text(other)
    assert main.main(['--config', str(other_path), '--phase', 'test', '--checkpoint',
                      str(config.workdir / 'best-run.pth')]) == 2
    assert 'does not fit' in capsys.readouterr().err


def test_signal_during_an_evaluation_abandons_it_and_saves_without_a_best(tmp_path, lmdbs, monkeypatch):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=1000, eval_iters=3, save_iters=1000)
    config = Config(path)
    batches = []
    real_evaluate = main.evaluate

    def evaluate_then_interrupt(learn, dl, *args, should_stop=None, **kwargs):
        def stop_after_first_batch():  # the signal arrives while the first evaluation batch runs
            batches.append(1)
            if len(batches) == 1:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            return should_stop()
        return real_evaluate(learn, dl, *args, should_stop=stop_after_first_batch, **kwargs)

    monkeypatch.setattr(main, 'evaluate', evaluate_then_interrupt)
    stop = StopSignal()
    with pytest.raises(Interrupted) as info, stop.installed():
        main.train(config, torch.device('cpu'), stop=stop)
    assert len(batches) == 1  # the 24 test images are 2 batches of 16: the second one never ran
    assert info.value.signum == signal.SIGINT and info.value.checkpoint == config.workdir / 'run_0_3.pth'
    assert load_checkpoint(info.value.checkpoint)['iteration'] == 3
    assert not (config.workdir / 'best-run.pth').exists()  # a cut-short evaluation is never compared
    log = (config.workdir / 'train.txt').read_text()
    assert 'iter 3: evaluation abandoned (stopping)' in log and ' eval loss' not in log
    assert 'stopped by SIGINT at iter 3' in log
