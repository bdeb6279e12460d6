"""End to end through main.py: short training runs whose losses fall, the test-phase table, CLI errors."""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main
import training.train
from configuration import REPO_ROOT, Config, load_yaml
from dataset import open_lmdb
from runtime.checkpoint import load_checkpoint
from runtime.stop_signal import Interrupted, StopSignal
from tests.helpers import BENCHMARKS, REPRODUCTION_CONFIG, TINY_VISION, render_lmdb, tiny_config


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


def test_training_ends_after_the_last_lr_phase(tmp_path, lmdbs):
    # As ABINet: the schedule's 1.5 epochs end the run although training.epochs asks for 5 and no max_iters is set.
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], epochs=5, max_iters=None, save_iters=1000)
    text = path.read_text().replace('lr: 0.003', 'lr: 0.001\n  scheduler:\n    periods: [1, 0.5]\n    gamma: 0.1')
    path.write_text(text)
    config = Config(path)
    callback = main.train(config, torch.device('cpu'))
    # 160 samples / batch 8 = 20 iterations per epoch: the schedule ends after 30.
    assert callback.iteration == 30
    log = (config.workdir / 'train.txt').read_text()
    assert 'training ends at iteration 30, as in ABINet: the last lr phase is over' in log
    assert 'iter 30: loss' in log and 'iter 31' not in log
    assert load_checkpoint(config.workdir / 'run_1_30.pth')['iteration'] == 30  # the end-of-training save
    # A run resumed at the end of the schedule has nothing left to train.
    assert main.main(['--config', str(path), '--resume', str(config.workdir / 'run_1_30.pth')]) == 0
    assert 'nothing left to train at iteration 30' in (config.workdir / 'train.txt').read_text()


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
    rates = ('invalid_rate', 'overlong_rate_view1', 'overlong_rate_view2')
    assert set(history[0]) >= {'vision_loss', 'vision_aug1_loss', 'vision_aug2_loss', 'rec_loss', 'clr_loss', *rates}
    assert all(h[key] == 0.0 for h in history for key in rates)  # 4 + 4 characters fit max_length 12
    window_line = next(line for line in (config.workdir / 'train.txt').read_text().splitlines() if 'iter 20:' in line)
    assert all(f'{key} = 0.0000' in window_line for key in rates)
    accumulator = EventAccumulator(str(next(config.workdir.glob('events.out.tfevents.*'))), {'scalars': 0})
    accumulator.Reload()
    assert {f'train/{key}' for key in rates} <= set(accumulator.Tags()['scalars'])
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


def test_test_phase_without_checkpoint_evaluates_the_runs_best(tmp_path, lmdbs, capsys):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=10)
    config = Config(path)
    main.train(config, torch.device('cpu'))
    best = tmp_path / 'workdir' / 'run' / 'best-run.pth'  # <global.workdir>/<global.name>/best-<global.name>.pth
    assert main.main(['--config', str(path), '--phase', 'test', '--image_only', '--checkpoint', str(best)]) == 0
    explicit = (config.workdir / 'test_results.csv').read_text()
    assert main.main(['--config', str(path), '--phase', 'test', '--image_only']) == 0
    assert (config.workdir / 'test_results.csv').read_text() == explicit
    log = (config.workdir / 'test.txt').read_text()
    assert log.count(f"no --checkpoint given: loading the run's best checkpoint {best}") == 1
    best.unlink()
    capsys.readouterr()
    assert main.main(['--config', str(path), '--phase', 'test', '--image_only']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:') and str(best) in err[0]


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
    (['--phase', 'test'], "the run's best checkpoint"),
    (['--model_eval', 'alignment'], 'only'),
    (['--test_root', '/nonexistent/lmdb', '--phase', 'test', '--checkpoint', 'x.pth'], '/nonexistent/lmdb'),
])
def test_cli_errors_are_one_line(tmp_path, lmdbs, capsys, argv_extra, message):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root])
    assert main.main(['--config', str(path), *argv_extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error:') and message in err and len(err.splitlines()) == 1


def test_reproduction_readme_commands_run_as_written(tmp_path, lmdbs):
    """The reproduction's train, test (no checkpoint) and demo commands, on its config layout (tests/fixtures)
    with the data paths pointed at small rendered LMDBs and the model and budget cut down for the CPU."""
    train_root, test_root = lmdbs
    tree = load_yaml(REPRODUCTION_CONFIG)
    tree['global'].update(workdir=str(tmp_path / 'workdir'), seed=0)
    tree['dataset'].update(train={'roots': [str(train_root)], 'batch_size': 8}, max_length=12, num_workers=0,
                           test={'roots': [str(test_root)], 'batch_size': 16})
    tree['training'].update(max_iters=10, show_iters=5, eval_iters=5, save_iters=5)
    tree['model']['vision'].update(TINY_VISION)
    tree['model']['embedding_channels'] = 8
    config_path = tmp_path / 'conclr_pretrain_vision_model.yaml'
    config_path.write_text(yaml.safe_dump(tree))
    images = tmp_path / 'demo_images'
    images.mkdir()
    for k, word in enumerate(['tree', 'house', 'ab12']):
        picture = np.full((32, 100, 3), 255, np.uint8)
        cv2.putText(picture, word, (4, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
        cv2.imwrite(str(images / f'{k}.png'), picture)

    def run(*argv: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result

    run('main.py', f'--config={config_path}')
    workdir = tmp_path / 'workdir' / 'conclr-pretrain-vision-model'
    train_log = (workdir / 'train.txt').read_text()
    assert 'model ConCLR_Vision' in train_log and 'conaug.side: batch' in train_log
    assert sum('(ConCLR reproduction) ->' in line or '(ABINet) ->' in line for line in train_log.splitlines()) == 5
    best = workdir / 'best-conclr-pretrain-vision-model.pth'
    assert sorted(k for k in load_checkpoint(best)['model'] if k.startswith('projection_head.')) == \
        ['projection_head.proj.0.bias', 'projection_head.proj.0.weight', 'projection_head.proj.2.bias',
         'projection_head.proj.2.weight']

    run('main.py', f'--config={config_path}', '--phase', 'test', '--image_only')
    assert f"loading the run's best checkpoint {best}" in (workdir / 'test.txt').read_text()
    rows = list(csv.DictReader(open(workdir / 'test_results.csv')))
    assert [(r['dataset'], r['samples']) for r in rows] == [('test', '24')]  # one set: no 'all' and 'average' rows

    demo = run('demo.py', f'--config={config_path}', f'--input={images}')
    assert [line.split('\t')[0] for line in demo.stdout.splitlines()] == [str(images / f'{k}.png') for k in range(3)]
    assert str(best) in demo.stderr and 'left out' in demo.stderr
    assert sorted(p.name for p in (workdir / 'demo').iterdir()) == ['0.png', '1.png', '2.png']


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


def test_training_loader_workers_end_with_train(tmp_path, lmdbs):
    """Persistent training workers must not outlive train() (the returned callback keeps the Learner alive, and
    in-process runs such as the OOD study's would pile them up)."""
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=4, show_iters=2, eval_iters=4, save_iters=4)
    path.write_text(path.read_text().replace('num_workers: 0', 'num_workers: 2'))
    before = {p.pid for p in multiprocessing.active_children()}
    callback = main.train(Config(path), torch.device('cpu'))
    assert callback.iteration == 4
    left = [p for p in multiprocessing.active_children() if p.pid not in before]
    assert left == [], f'{len(left)} loader worker process(es) still alive after train() returned'


def test_signal_during_an_evaluation_abandons_it_and_saves_without_a_best(tmp_path, lmdbs, monkeypatch):
    train_root, test_root = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=1000, eval_iters=3, save_iters=1000)
    config = Config(path)
    batches = []
    real_evaluate = training.train.evaluate

    def evaluate_then_interrupt(learn, dl, *args, should_stop=None, **kwargs):
        def stop_after_first_batch():  # the signal arrives while the first evaluation batch runs
            batches.append(1)
            if len(batches) == 1:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            return should_stop()
        return real_evaluate(learn, dl, *args, should_stop=stop_after_first_batch, **kwargs)

    monkeypatch.setattr(training.train, 'evaluate', evaluate_then_interrupt)
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
