"""The small GPU-path fixes: TF32, the derived loader worker count, persistent evaluation workers,
the gloo stop group made at setup with the run's timeout, CPU checkpoints, fp16 with a fused Adam refused, and
`demo.py --cuda` without a number."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401

import datetime
import os

import pytest
import torch
from torch import nn

import demo
import runtime.distributed as distributed
from configuration import Config, ConfigError
from runtime.checkpoint import save_checkpoint, to_cpu
from runtime.matmul_precision import set_tf32
from tests.helpers import render_lmdb, tiny_config
from training.builders import check_optimizer_precision
from training.loaders import MAX_AUTO_WORKERS, eval_dataloader, worker_count


def test_tf32_is_set_on_cuda_only():
    before = torch.get_float32_matmul_precision()
    try:
        assert not set_tf32(True, 'cpu') and torch.get_float32_matmul_precision() == before
        assert set_tf32(True, 'cuda:0') and torch.get_float32_matmul_precision() == 'high'
        assert not set_tf32(False, torch.device('cuda', 0)) and torch.get_float32_matmul_precision() == 'highest'
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = True
    assert Config().training_tf32 is True


def test_worker_count_is_explicit_or_the_cpus_per_process(monkeypatch):
    config = Config()
    assert config.dataset_num_workers is None  # the template derives it
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(64)))
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')
    assert worker_count(config) == 7  # 64 CPUs / 8 processes, one left for each process itself
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '1')
    assert worker_count(config) == MAX_AUTO_WORKERS
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1})
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    assert worker_count(config) == 1
    config.dataset_num_workers = 0
    assert worker_count(config) == 0  # an explicit value is kept
    config.dataset_num_workers = 14
    assert worker_count(config) == 14


def test_evaluation_loader_of_training_keeps_its_workers(tmp_path):
    from dataset import ImageDataset
    from training.loaders import shutdown_workers
    from utils import CharsetMapper

    root = render_lmdb(tmp_path / 'test', 4)
    config = Config(tiny_config(tmp_path, root, [root]))
    config.dataset_num_workers = 1
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    dataset = ImageDataset(str(root), charset, img_h=32, img_w=128, is_training=False)
    loader = eval_dataloader(config, dataset, torch.device('cpu'), persistent=True)
    assert loader.persistent_workers and not eval_dataloader(config, dataset, torch.device('cpu')).persistent_workers
    shutdown_workers(loader)


def test_the_stop_group_is_made_at_setup_with_the_runs_timeout(monkeypatch):
    made = []
    monkeypatch.setattr(distributed.dist, 'get_backend', lambda group=None: 'nccl')
    monkeypatch.setattr(distributed.dist, 'new_group', lambda **kwargs: made.append(kwargs) or 'gloo-group')
    timeout = distributed.group_timeout(600)
    assert distributed.create_cpu_group(timeout, 'nccl') == 'gloo-group'
    assert made == [{'backend': 'gloo', 'timeout': datetime.timedelta(seconds=600)}]
    assert distributed.cpu_group() == 'gloo-group' and len(made) == 1  # not made again mid-training
    distributed._CPU_GROUP.clear()
    monkeypatch.setattr(distributed.dist, 'get_backend', lambda group=None: 'gloo')
    assert distributed.create_cpu_group(timeout, 'gloo') is None  # the default group serves under gloo


class _FakeDeviceTensor(torch.Tensor):
    """A CPU tensor that records `.cpu()` calls, standing in for a CUDA tensor."""

    calls = 0

    def cpu(self, *args, **kwargs):
        type(self).calls += 1
        return torch.Tensor.cpu(self).as_subclass(torch.Tensor)


def test_checkpoints_are_saved_with_cpu_tensors(tmp_path):
    value = torch.ones(2).as_subclass(_FakeDeviceTensor)
    moved = to_cpu({'a': [value, (value, 3)], 'b': 'text'})
    assert _FakeDeviceTensor.calls == 2 and type(moved['a'][0]) is torch.Tensor and moved['b'] == 'text'
    model = nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / 'c.pth', model, opt, rng=[{'cuda': None}])
    state = torch.load(path, weights_only=True)  # no map_location
    assert all(t.device.type == 'cpu' for t in state['model'].values())


def test_fp16_with_a_fused_or_capturable_adam_is_refused():
    config = Config()
    check_optimizer_precision(config, 'fp16')  # torch's default Adam: fine
    config.optimizer_args_fused = True
    check_optimizer_precision(config, 'bf16')
    with pytest.raises(ConfigError, match=r'optimizer.args.fused true with training.amp fp16'):
        check_optimizer_precision(config, 'fp16')
    config.optimizer_args_fused, config.optimizer_args_capturable = None, True
    with pytest.raises(ConfigError, match=r'optimizer.args.capturable true with training.amp fp16'):
        check_optimizer_precision(config, 'fp16')


def test_demo_bare_cuda_means_device_0():
    base = ['--config', 'c.yaml', '--input', 'x']
    assert demo.parse_args(base).cuda == -1
    assert demo.parse_args(base + ['--cuda']).cuda == 0
    assert demo.parse_args(base + ['--cuda', '--image_only']).cuda == 0
    assert demo.parse_args(base + ['--cuda', '1']).cuda == 1
    assert demo.parse_args(base + ['--cuda=2']).cuda == 2
