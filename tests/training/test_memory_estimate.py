"""The memory estimate before the first step: saved-tensor bytes, scaling, the one-line error with advice when a
(faked) small device cannot hold a step, and an out-of-memory error during training ending the same way."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401

import pytest
import torch
import yaml
from fastai.callback import Callback
from torch import nn

import main
import training.train
from configuration import REPO_ROOT, Config
from tests.helpers import render_lmdb, tiny_config
from training.memory_estimate import (
    GIB,
    MemoryEstimate,
    MemoryEstimateError,
    advice,
    check_fits,
    fitting_accumulation,
    measure,
    saved_tensor_bytes,
)


def test_saved_tensor_bytes_counts_each_storage_once_and_leaves_parameters_out():
    layer = nn.Linear(10, 20)
    x = torch.randn(8, 10, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    # linear saves its input (8 x 10) and weight (excluded); relu saves its output (8 x 20); * 2 saves nothing new
    got = saved_tensor_bytes(lambda: torch.relu(layer(x)).sum(), params)
    assert got == (8 * 10 + 8 * 20) * 4


def test_measure_scales_with_the_batch_and_leaves_the_random_state_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5))
    before_stats = model[1].running_mean.clone()
    state = torch.get_rng_state()
    estimate = measure(model, (3, 8, 8), 1, torch.device('cpu'), None, micro_batch=10, amp=None)
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(model[1].running_mean, before_stats)
    assert estimate.parameters == sum(p.numel() for p in model.parameters())
    # per image: the convolution's input (3 x 8 x 8), BatchNorm's input and ReLU's output (4 x 8 x 8 each; the
    # flattened view and the linear layer share ReLU's), float32
    assert estimate.per_image == (3 + 4 + 4) * 8 * 8 * 4
    assert estimate.with_batch(20).activation_bytes > estimate.activation_bytes


def test_advice_names_the_smallest_accumulation_that_fits_and_bf16():
    estimate = MemoryEstimate(parameters=1000, per_image=0.1 * GIB, fixed=0.0, micro_batch=64, amp=None)
    free = estimate.with_batch(16).total + 1
    assert fitting_accumulation(estimate, 128, 2, free) == 4  # 64 per process -> 16 fits
    bf16 = MemoryEstimate(1000, 0.05 * GIB, 0.0, 64, 'bf16')
    text = advice(estimate, 128, 2, 1, free, bf16)
    assert 'training.accumulate 4 (16 images per process)' in text
    assert 'training.amp bf16 with training.accumulate 2 (32 images per process)' in text
    assert check_fits(estimate.with_batch(16), free, torch.device('cpu'), 128, 2, 4).startswith(
        'memory estimate per process')
    with pytest.raises(MemoryEstimateError, match='not even one image'):
        check_fits(estimate, 1.0, torch.device('cpu'), 128, 2, 1)


def _fail_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_too_small_a_device_ends_with_the_estimate_and_advice_before_the_first_step(tmp_path, monkeypatch, capsys):
    train_root = render_lmdb(tmp_path / 'train', 16, seed=1)
    test_root = render_lmdb(tmp_path / 'test', 4, seed=2)
    path = tiny_config(tmp_path, train_root, [test_root], conclr=True, max_iters=2)
    config = Config(path)
    fits_at_4 = {}

    def fake_free(device, processes=1):  # room for 4 of the 8 images of a step, not for 8
        return fits_at_4['bytes']

    real_measure = training.train.measure

    def spy(*args, **kwargs):
        estimate = real_measure(*args, **kwargs)
        fits_at_4.setdefault('bytes', (estimate.with_batch(4).total + estimate.with_batch(8).total) / 2)
        return estimate

    monkeypatch.setattr(training.train, 'free_memory', fake_free)
    monkeypatch.setattr(training.train, 'measure', spy)
    assert main.main(['--config', str(path)]) == 2
    line = _fail_line(capsys)
    assert line.startswith('error: training will not fit in memory: about ')
    for part in ('8 images per process = dataset.train.batch_size 8 / (training.processes 1 x training.accumulate 1)',
                 'training.amp off', 'it fits with training.accumulate 2 (4 images per process)'):
        assert part in line, line
    assert not list(config.workdir.glob('*.pth'))  # no step was taken


def test_the_conclr_recipe_on_a_24_gib_device_ends_with_one_line(tmp_path, monkeypatch, capsys):
    """The recipe as shipped (full-size ConCLR-Vision, batch 384), only its data and work directory replaced."""
    recipe = yaml.safe_load((REPO_ROOT / 'configs' / 'conclr_pretrain_vision_model.yaml').read_text())
    recipe['dataset']['train']['roots'] = [str(render_lmdb(tmp_path / 'train', 384, seed=1))]
    recipe['dataset']['test']['roots'] = [str(render_lmdb(tmp_path / 'test', 4, seed=2))]
    recipe['dataset']['num_workers'] = 0
    recipe['global']['workdir'] = str(tmp_path / 'workdir')
    path = tmp_path / 'recipe.yaml'
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.setattr(training.train, 'free_memory', lambda device, processes=1: 24.0 * GIB)
    assert main.main(['--config', str(path)]) == 2
    line = _fail_line(capsys)
    assert 'training will not fit in memory' in line and '24.0 GiB free on cpu' in line
    assert 'dataset.train.batch_size 384 / (training.processes 1 x training.accumulate 1)' in line
    assert 'training.amp off' in line and 'it fits with training.accumulate ' in line


class _OutOfMemory(Callback):
    def on_batch_begin(self, train: bool, **kwargs) -> None:
        if train:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')


def test_an_out_of_memory_error_in_training_ends_with_one_line(tmp_path, monkeypatch, capsys):
    train_root = render_lmdb(tmp_path / 'train', 16, seed=1)
    test_root = render_lmdb(tmp_path / 'test', 4, seed=2)
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=2, accumulate=2)
    real = training.train.training_callbacks
    monkeypatch.setattr(training.train, 'training_callbacks', lambda *a, **k: real(*a, **k) + [_OutOfMemory()])
    assert main.main(['--config', str(path)]) == 2
    line = _fail_line(capsys)
    assert line.startswith('error: out of memory on cpu at iteration 1 with 4 images per process = '
                           'dataset.train.batch_size 8 / (training.processes 1 x training.accumulate 2), '
                           'training.amp off, estimated '), line
    assert 'try training.accumulate 4 (2 images per process) or training.amp bf16 (or auto)' in line
