"""Resuming a killed training run: counters, lr phase, lost work and the continued weights."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import main
from configuration import REPO_ROOT, Config
from runtime.checkpoint import (
    CheckpointError,
    capture_rng,
    find_checkpoint,
    load_checkpoint,
    restore_rng,
    resume_point,
    save_checkpoint,
)
from tests.helpers import render_lmdb, tiny_config


def test_resume_point_continues_mid_epoch_or_at_the_next_boundary():
    state = {'iteration': 37, 'epoch': 1, 'batch_in_epoch': 17, 'iters_per_epoch': 20, 'world_size': 2,
             'global_batch': 8}
    exact = resume_point(state, 20, 2, 8)
    assert (exact.iteration, exact.epoch, exact.skip_batches, exact.exact) == (37, 1, 17, True)
    done = resume_point({**state, 'iteration': 40, 'batch_in_epoch': 20}, 20, 2, 8)
    assert (done.iteration, done.epoch, done.skip_batches) == (40, 2, 0)
    for changed in ((20, 4, 8), (10, 2, 16)):  # other process count, other batch
        boundary = resume_point(state, *changed)
        assert (boundary.iteration, boundary.epoch, boundary.skip_batches, boundary.exact) == (37, 2, 0, False)
    legacy = resume_point({'iteration': 37, 'epoch': 1}, 20, 1, 8)
    assert (legacy.epoch, legacy.skip_batches, legacy.exact) == (2, 0, False)


def test_find_checkpoint_takes_the_newest_periodic_one(tmp_path):
    for name in ('run_0_90.pth', 'run_1_100.pth', 'run_0_20.pth', 'best-run.pth'):
        (tmp_path / name).write_bytes(b'')
    assert find_checkpoint(tmp_path).name == 'run_1_100.pth'  # by iteration, not by name
    assert find_checkpoint(tmp_path / 'run_0_20.pth').name == 'run_0_20.pth'
    (tmp_path / 'empty').mkdir()
    with pytest.raises(CheckpointError, match='no periodic checkpoint'):
        find_checkpoint(tmp_path / 'empty')


def test_random_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    random.seed(4)
    np.random.seed(5)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    path = save_checkpoint(tmp_path / 'c.pth', torch.nn.Linear(1, 1), rng=[capture_rng()])
    expected = (torch.rand(4), random.random(), np.random.normal(size=3))
    restore_rng(load_checkpoint(path)['rng'][0])
    got = (torch.rand(4), random.random(), np.random.normal(size=3))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])


def _iteration_lines(text: str) -> dict[int, str]:
    return {int(m[1]): line for line in text.splitlines() if (m := re.search(r'iter (\d+): loss', line))}


def test_killed_run_resumes_where_its_last_checkpoint_left_off(tmp_path):
    train_root = render_lmdb(tmp_path / 'train', 80, seed=1)
    test_root = render_lmdb(tmp_path / 'test', 8, seed=2)
    # 80 samples / batch 8 = 10 iterations per epoch; lr 1e-3 in epoch 0, 1e-4 from iteration 11 on.
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=1000, show_iters=1, eval_iters=100,
                       save_iters=4)
    path.write_text(path.read_text().replace('lr: 0.003', 'lr: 0.001\n  scheduler:\n    periods: [1, 1]\n'
                                                                    '    gamma: 0.1'))
    config = Config(path)
    first = config.workdir / 'run_0_4.pth'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / 'main.py'), '--config', str(path)], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not first.exists():
            assert proc.poll() is None, 'training ended before its first checkpoint'
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = (config.workdir / 'train.txt').read_text()
    reached = max(_iteration_lines(before))  # the run completed at least this many iterations
    latest = find_checkpoint(config.workdir)
    saved = load_checkpoint(latest)['iteration']
    assert reached - saved <= 4  # at most save_iters iterations lost
    assert saved < 16, 'the killed run got too far for this test'

    # The resumed run stops at 16; so does an uninterrupted reference run.
    path.write_text(path.read_text().replace('max_iters: 1000', 'max_iters: 16'))
    assert main.main(['--config', str(path), '--resume', str(config.workdir)]) == 0
    after = (config.workdir / 'train.txt').read_text()[len(before):]
    lines = _iteration_lines(after)
    assert sorted(lines) == list(range(saved + 1, 17))  # the counter continues after the checkpoint
    for it, line in lines.items():
        assert f'epoch {(it - 1) // 10} iter {it}:' in line
        assert ('lr = 1.00e-03' if it <= 10 else 'lr = 1.00e-04') in line
    assert f'resuming from {latest} at iteration {saved}' in after

    reference = Config(path)
    reference.global_name = 'reference'
    main.train(reference, torch.device('cpu'))
    resumed = load_checkpoint(config.workdir / 'run_1_16.pth')
    uninterrupted = load_checkpoint(reference.workdir / 'reference_1_16.pth')
    for key, value in uninterrupted['model'].items():  # data order, optimiser, lr and random state all continued
        assert torch.equal(resumed['model'][key], value), key
    assert resumed['lr'] == uninterrupted['lr'] == pytest.approx(1e-4)


def test_a_resumed_run_keeps_the_timings_and_evaluations_of_its_first_part(tmp_path):
    """The records saved in a checkpoint (evaluations, loss windows, timed windows) carry over, so a run resumed
    once reports the same windows and evaluations as one run straight through."""
    train_root = render_lmdb(tmp_path / 'train', 80, seed=1)
    test_root = render_lmdb(tmp_path / 'test', 8, seed=2)
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=4, show_iters=2, eval_iters=4, save_iters=4)
    config = Config(path)
    first = main.train(config, torch.device('cpu'))
    assert load_checkpoint(config.workdir / 'run_0_4.pth')['records']['timings'] == first.timings
    config = Config(path)
    config.training_max_iters = 8
    config.training_resume = str(config.workdir)
    resumed = main.train(config, torch.device('cpu'))
    straight = Config(path)
    straight.training_max_iters, straight.global_name = 8, 'straight'
    reference = main.train(straight, torch.device('cpu'))
    for run in (resumed, reference):
        assert [(t['iteration'], t['steps']) for t in run.timings] == [(2, 2), (4, 2), (6, 2), (8, 2)]
        assert [h['iteration'] for h in run.history] == [4, 8]
        assert [h['iteration'] for h in run.train_history] == [2, 4, 6, 8]
    assert resumed.timings[:2] == first.timings and resumed.history[0] == first.history[0]
    assert [h['cwr'] for h in resumed.history] == [h['cwr'] for h in reference.history]
