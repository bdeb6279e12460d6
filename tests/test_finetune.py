"""Fine-tuning as docs/data.md documents it: labelled crops -> tools/create_lmdb_dataset.py -> `main.py --checkpoint`
training that starts from the checkpoint's weights with a fresh optimiser."""

from __future__ import annotations

import cv2
import numpy as np
import torch

import main
from configuration import Config
from modules.model_vision import BaseVision
from runtime.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import WORDS, randomise, tiny_config
from tools import create_lmdb_dataset
from tools.synth.fonts import find_fonts
from tools.synth.plain import render_word

LR = 1e-3


def write_crops(folder, num: int) -> None:
    """`num` rendered word crops as PNG files plus the gt file create_lmdb_dataset.py reads."""
    rng, fonts = np.random.default_rng(3), find_fonts()[:3]
    lines = []
    for i in range(num):
        word = WORDS[i % len(WORDS)]
        cv2.imwrite(str(folder / f'crop_{i}.png'), render_word(word, fonts[i % len(fonts)], rng)[..., ::-1])
        lines.append(f'crop_{i}.png\t{word}')
    (folder / 'gt.txt').write_text('\n'.join(lines) + '\n')


def test_finetuning_starts_from_the_checkpoint_with_a_fresh_adam(tmp_path):
    crops = tmp_path / 'crops'
    crops.mkdir()
    write_crops(crops, 24)
    lmdb_root = tmp_path / 'lmdb'
    assert create_lmdb_dataset.main(['--input_dir', str(crops), '--gt_file', str(crops / 'gt.txt'),
                                     '--output', str(lmdb_root)]) == 0
    config_path = tiny_config(tmp_path, lmdb_root, [lmdb_root], max_iters=1, eval_iters=1, save_iters=1)
    config_path.write_text(config_path.read_text().replace('lr: 0.003', f'lr: {LR}'))

    # the "pretrained" checkpoint carries a used Adam state, which fine-tuning must not pick up
    pretrained = randomise(BaseVision(Config(config_path)), seed=1)
    used = torch.optim.Adam(pretrained.parameters(), lr=1e-4)
    for _ in range(3):
        pretrained(torch.randn(2, 3, 32, 128))['logits'].square().mean().backward()
        used.step()
    start = save_checkpoint(tmp_path / 'pretrained.pth', pretrained, used, iteration=500)

    assert main.main(['--config', str(config_path), '--checkpoint', str(start)]) == 0

    after = load_checkpoint(Config(config_path).workdir / 'run_0_1.pth')
    assert after['iteration'] == 1  # a new run, not a resumed one
    before = load_checkpoint(start)['model']
    steps = torch.cat([(after['model'][k] - v).abs().flatten() for k, v in before.items()
                       if v.is_floating_point() and 'running_' not in k])
    # a fresh Adam's first update is lr * g / |g| per element: no element moves further than lr from the
    # checkpoint's value, and the moved ones by about lr (a restored Adam state, or other start weights, would not)
    assert steps.max() <= LR * 1.001
    moved = steps[steps > 0]
    assert moved.numel() > 0.5 * steps.numel()
    assert moved.median() > 0.9 * LR
