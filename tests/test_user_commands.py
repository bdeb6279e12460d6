"""What users run, as they run it: `python main.py` training, then `--resume`, `--phase test`, `demo.py`, and two
DDP processes started by `python main.py` itself (training.processes 2, then the test phase on both).

Each test has a CPU variant (gloo, in the normal suite; the GPU is hidden with CUDA_VISIBLE_DEVICES) and a CUDA
variant (marked `cuda`: skipped without a GPU; `tools/gpu_check.sh` runs it) in which the commands run on the GPU
with `training.amp: auto` (bf16 there), `demo.py --cuda` bare, and the two DDP processes on two GPUs with NCCL and
SyncBatchNorm, or
on one GPU sharing it with gloo (`global.dist_backend: gloo`). With CONCLR_TEST_DEVICE=cpu the CUDA variant runs on
the CPU instead (the GPU check's dry run leaves this file out: the CPU variants are the same code on the CPU).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from runtime.checkpoint import load_checkpoint
from tests.cli_runner import run
from tests.helpers import TINY_VISION, render_lmdb

VARIANTS = [pytest.param('cpu', id='cpu'), pytest.param('cuda', id='cuda', marks=pytest.mark.cuda)]


def on_gpu(variant: str) -> bool:
    """Whether this variant's commands run on a GPU (the CUDA variant, unless the dry run points it at the CPU)."""
    return variant == 'cuda' and os.environ.get('CONCLR_TEST_DEVICE', 'cuda').startswith('cuda')


def environment(variant: str) -> dict[str, str]:
    """The CPU variant hides any GPU, as a user of a CPU-only machine has none."""
    return {} if on_gpu(variant) else {'CUDA_VISIBLE_DEVICES': ''}


def write_run_config(folder: Path, train_root: Path, test_root: Path, **training: object) -> Path:
    """A tiny ConCLR-Vision run: 4 optimiser steps of 8 images as 2 accumulated micro-batches, amp auto."""
    tree = {'global': {'name': 'user', 'workdir': str(folder / 'workdir'), 'seed': 0},
            'dataset': {'train': {'roots': [str(train_root)], 'batch_size': 8},
                        'test': {'roots': [str(test_root)], 'batch_size': 8}, 'num_workers': 0,
                        'data_aug': False, 'max_length': 12},
            'training': {'epochs': 100, 'max_iters': 4, 'show_iters': 1, 'eval_iters': 2, 'save_iters': 2,
                         'accumulate': 2, 'amp': 'auto', **training},
            'optimizer': {'lr': 0.003},
            'model': {'name': 'modules.model_conclr.ConCLR_Vision',
                      'vision': dict(TINY_VISION, loss_weight=[1.0, 0.5, 0.5]), 'projection': {'channels': 8}}}
    path = folder / 'user.yaml'
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('user_lmdb')
    return render_lmdb(root / 'train', 24, seed=1), render_lmdb(root / 'test', 8, seed=2)


def _ok(result, what: str) -> None:
    assert result.status == 0, f'{what}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}'


def _steps(log: str) -> list[int]:
    return [int(m[1]) for m in re.finditer(r'iter (\d+): loss', log)]


@pytest.mark.parametrize('variant', VARIANTS)
def test_train_resume_test_and_demo_as_a_user(tmp_path, lmdbs, variant):
    gpu, env = on_gpu(variant), environment(variant)
    device = 'cuda:0' if gpu else 'cpu'
    path = write_run_config(tmp_path, *lmdbs)
    workdir = tmp_path / 'workdir' / 'user'

    _ok(run('main.py', ['--config', path], tmp_path / 'train', env), 'training')
    log = (workdir / 'train.txt').read_text()
    assert f'device {device}' in log and 'memory estimate per process' in log
    assert ('mixed precision bf16' in log) == (gpu and torch.cuda.is_bf16_supported())
    assert _steps(log) == [1, 2, 3, 4]
    state = load_checkpoint(workdir / 'user_1_4.pth')
    assert state['iteration'] == 4 and all(t.device.type == 'cpu' for t in state['model'].values())

    path.write_text(path.read_text().replace('max_iters: 4', 'max_iters: 6'))
    _ok(run('main.py', ['--config', path, '--resume', workdir], tmp_path / 'resume', env), 'resuming')
    resumed = (workdir / 'train.txt').read_text()[len(log):]
    assert f'resuming from {workdir / "user_1_4.pth"} at iteration 4' in resumed
    assert _steps(resumed) == [5, 6]

    _ok(run('main.py', ['--config', path, '--phase', 'test', '--image_only'], tmp_path / 'test', env), 'testing')
    rows = list(csv.DictReader(open(workdir / 'test_results.csv')))
    assert [(r['dataset'], r['samples']) for r in rows] == [('test', '8')]

    images = tmp_path / 'images'
    images.mkdir()
    for k, word in enumerate(['tree', 'ab12']):
        picture = np.full((32, 100, 3), 255, np.uint8)
        cv2.putText(picture, word, (4, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
        cv2.imwrite(str(images / f'{k}.png'), picture)
    demo_args = ['--config', path, '--input', images, '--image_only'] + (['--cuda'] if gpu else [])
    demo = run('demo.py', demo_args, tmp_path / 'demo', env)
    _ok(demo, 'demo')
    assert [line.split('\t')[0] for line in demo.stdout.splitlines()] == [str(images / f'{k}.png') for k in range(2)]


@pytest.mark.parametrize('variant', VARIANTS)
def test_two_ddp_processes_train_and_test_as_a_user(tmp_path, lmdbs, variant):
    gpu, env = on_gpu(variant), environment(variant)
    shared_gpu = gpu and torch.cuda.device_count() < 2  # two processes on one GPU: gloo
    extra = {'processes': 2, 'max_iters': 2, 'save_iters': 2, 'eval_iters': 2,
             'sync_bn': gpu and not shared_gpu}  # SyncBatchNorm needs NCCL
    path = write_run_config(tmp_path, *lmdbs, **extra)
    if shared_gpu:
        path.write_text(path.read_text().replace('global:\n', 'global:\n  dist_backend: gloo\n'))
    workdir = tmp_path / 'workdir' / 'user'

    _ok(run('main.py', ['--config', path], tmp_path / 'train', env, timeout=300), 'two-process training')
    log = (workdir / 'train.txt').read_text()
    backend = 'NCCL' if gpu and not shared_gpu else 'gloo'
    assert "2 processes started by main.py through torch's elastic launcher (training.processes 2)" in log
    assert f'2 processes ({backend}): global batch 8 = 2 x 2 x 2 accumulated micro-batches' in log
    assert _steps(log) == [1, 2]
    assert load_checkpoint(workdir / 'best-user.pth')['world_size'] == 2

    _ok(run('main.py', ['--config', path, '--phase', 'test', '--image_only'], tmp_path / 'test', env, timeout=300),
        'two-process test phase')
    rows = list(csv.DictReader(open(workdir / 'test_results.csv')))
    assert [(r['dataset'], r['samples']) for r in rows] == [('test', '8')]
