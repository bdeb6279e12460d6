"""Shared builders for tests: tiny configs and tiny rendered LMDBs."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from configuration import REPO_ROOT
from tools.lmdb_writer import write_lmdb
from tools.synth.fonts import find_fonts
from tools.synth.plain import render_word

BENCHMARKS = REPO_ROOT.parent / 'shared' / 'benchmarks'
# A config in the ConCLR reproduction's layout (its own keys beside ABINet's), written for the tests.
REPRODUCTION_CONFIG = Path(__file__).resolve().parent / 'fixtures' / 'reproduction_conclr_pretrain_vision_model.yaml'
TINY_VISION = {'d_model': 16, 'nhead': 2, 'd_inner': 32, 'backbone_ln': 1, 'resnet_widths': [4, 8, 8, 16, 16],
               'attention_channels': 8}
WORDS = ['cat', 'dog', 'tree', 'house', 'river', 'stone', 'light', 'ab12', 'zoo', 'quiz']


def render_lmdb(path: Path, num: int, seed: int = 0, words: list[str] = WORDS) -> Path:
    """An LMDB of `num` rendered words (cycled through `words`)."""
    rng = np.random.default_rng(seed)
    fonts = find_fonts()[:4]
    samples = []
    for i in range(num):
        word = words[i % len(words)]
        image = render_word(word, fonts[i % len(fonts)], rng)
        ok, png = cv2.imencode('.png', image[..., ::-1])
        assert ok
        samples.append((png.tobytes(), word))
    write_lmdb(path, samples)
    return path


def write_config(path: Path, **sections: dict) -> Path:
    """A YAML config file from nested dicts (merged over configs/template.yaml when loaded)."""
    path.write_text(yaml.safe_dump(sections))
    return path


def tiny_config(tmp_path: Path, train_root: Path, test_roots: list[Path], conclr: bool = False,
                **training: object) -> Path:
    """A config for a few dozen CPU iterations of a tiny model."""
    model = {'name': 'modules.model_conclr.ConCLR_Vision' if conclr else 'modules.model_vision.BaseVision',
             'vision': dict(TINY_VISION, loss_weight=[1.0, 0.5, 0.5] if conclr else 1.0)}
    if conclr:
        model['projection'] = {'channels': 8}
    return write_config(
        tmp_path / ('conclr.yaml' if conclr else 'vision.yaml'),
        **{'global': {'name': 'run', 'workdir': str(tmp_path / 'workdir'), 'seed': 0},
           'dataset': {'train': {'roots': [str(train_root)], 'batch_size': 8},
                       'test': {'roots': [str(r) for r in test_roots], 'batch_size': 16},
                       'num_workers': 0, 'data_aug': False, 'max_length': 12},
           'training': {'epochs': 100, 'max_iters': 40, 'show_iters': 10, 'eval_iters': 20, 'save_iters': 10,
                        **training},
           'optimizer': {'lr': 0.003},
           'model': model})


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights AND BatchNorm running statistics (so eval-mode BN is not the identity); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or name.endswith('.pe'):
                continue
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith(('running_mean', 'bias')):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif t.dim() == 1:  # BN / LayerNorm weights
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
    return model.eval()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
