"""The shipped checkpoints (checkpoints/*.pth): small, weights-only, the sha256 docs/results.md gives, and they read."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

from configuration import REPO_ROOT, Config
from dataset import to_normalized_tensor
from demo import load_inference_model, resized
from modules.decoding import decode_logits
from runtime.checkpoint import load_checkpoint
from tools.synth.fonts import find_fonts
from tools.synth.plain import render_word
from utils import CharsetMapper

SHIPPED = ('abinet_vision_quarter', 'conclr_vision_quarter')
MAX_BYTES = 6_000_000
# common words, rendered with the fonts every machine has (matplotlib's); none is chosen from the training data
WORDS = ('river', 'garden', 'people', 'street', 'coffee', 'market', 'hotel', 'night', 'world', 'orange', 'public',
         'summer', 'window', 'yellow', 'travel', 'simple')


def shipped(name: str) -> tuple[Config, str]:
    config = Config(REPO_ROOT / 'checkpoints' / f'{name}.yaml')
    return config, str(REPO_ROOT / config.model_checkpoint)


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_checkpoint_is_small_weights_only_and_matches_the_results_table(name):
    _, path = shipped(name)
    data = open(path, 'rb').read()
    assert len(data) <= MAX_BYTES
    state = load_checkpoint(path)  # weights_only=True
    assert state['opt'] is None
    results = (REPO_ROOT / 'docs' / 'results.md').read_text()
    quoted = re.search(rf'{name}\.pth[^\n]*?([0-9a-f]{{64}})', results)
    assert quoted is not None, f'docs/results.md gives no sha256 for {name}.pth'
    assert quoted.group(1) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_model_reads_rendered_words(name):
    config, path = shipped(name)
    model = load_inference_model(config, [path], log=lambda message: None)
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    rng, fonts = np.random.default_rng(0), find_fonts()[:4]
    images = [resized(render_word(word, fonts[i % len(fonts)], rng), config) for i, word in enumerate(WORDS)]
    with torch.no_grad():
        texts, _, _ = decode_logits(model(torch.stack([to_normalized_tensor(im) for im in images]))['logits'],
                                    charset)
    correct = [text for text, word in zip(texts, WORDS) if text == word]
    assert len(correct) >= 12, f'read {len(correct)} of {len(WORDS)}: {list(zip(WORDS, texts))}'
