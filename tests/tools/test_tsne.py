"""tools/tsne.py: slot selection against hand-built glimpses, t-SNE keeps separated clusters apart, and the
tool writes its side-by-side PNG from rendered words in an LMDB."""

import os
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import torch
import yaml

from dataset import ImageDataset, close_lmdb
from modules.model_conclr import ConCLR_Vision
from modules.model_vision import BaseVision
from support.checkpoint import save_checkpoint
from tools import tsne
from tools.create_lmdb_dataset import write_lmdb
from tools.render_synthetic import render_word
from utils import CharsetMapper, Config

REPO = Path(__file__).resolve().parents[2]
CHARSET = REPO / 'data' / 'charset_36.txt'
FONT = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'fonts', 'ttf', 'DejaVuSans.ttf')
VISION = {'resnet_widths': [4, 8, 8, 16, 16], 'resnet_layers': [1, 1, 1, 1, 1], 'd_model': 16, 'nhead': 2,
          'd_inner': 32, 'backbone_ln': 1, 'attention_channels': 8}
WORDS = ['ab', 'Cab', 'b1', 'x9z', 'hello', 'Tea', 'q', 'z0', 'mop', 'dig']


def write_config(tmp_path: Path, conclr: bool = False) -> Path:
    """A tiny BaseVision (or ConCLR) config."""
    model = {'vision': dict(VISION)}
    if conclr:
        model = {'name': 'modules.model_conclr.ConCLR_Vision',
                 'vision': {**VISION, 'loss_weight': [1.0, 0.5, 0.5]}, 'projection': {'channels': 8}}
    path = tmp_path / ('conclr.yaml' if conclr else 'base.yaml')
    path.write_text(yaml.safe_dump({'dataset': {'max_length': 5, 'charset_path': str(CHARSET)}, 'model': model}))
    return path


@pytest.fixture
def word_lmdb(tmp_path):
    """40 rendered words (labels with upper case, cleaned to lower case by the 36-class charset)."""
    rng = np.random.default_rng(0)
    samples = []
    for k in range(40):
        word = WORDS[k % len(WORDS)]
        ok, png = cv2.imencode('.png', render_word(word, FONT, rng)[..., ::-1])
        samples.append((png.tobytes(), word))
    path = tmp_path / 'words'
    write_lmdb(path, samples)
    yield path
    close_lmdb(path)


def test_select_slots_takes_ground_truth_characters():
    n, t, e = 3, 4, 2
    features = torch.tensor([[[10 * i + j, -j] for j in range(t)] for i in range(n)], dtype=torch.float32)
    assert features.shape == (n, t, e)
    gts = ['ab', 'xyzwv', '']  # the second is longer than the 4 slots
    rows, labels = tsne.select_slots(features, gts)
    assert labels == ['a', 'b', 'x', 'y', 'z', 'w']
    np.testing.assert_array_equal(rows, [[0, 0], [1, -1], [10, 0], [11, -1], [12, -2], [13, -3]])

    rows, labels = tsne.select_slots(features, gts, ['AB', 'xyzw', 'q'], only_correct=True)
    assert labels == ['a', 'b'] and rows.tolist() == [[0, 0], [1, -1]]
    rows, labels = tsne.select_slots(features, gts, ['AB', 'xyzw', 'q'], only_correct=True, case_sensitive=True)
    assert labels == [] and rows.shape == (0, e)
    with pytest.raises(ValueError):
        tsne.select_slots(features, gts, None, only_correct=True)


def test_embed_2d_keeps_separated_clusters_apart():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (15, 8))
    b = rng.normal(50.0, 1.0, (15, 8))
    points = tsne.embed_2d(np.concatenate([a, b]), perplexity=5)
    assert points.shape == (30, 2) and np.isfinite(points).all()
    pa, pb = points[:15], points[15:]
    within = max(np.ptp(pa, axis=0).max(), np.ptp(pb, axis=0).max())
    between = np.linalg.norm(pa[:, None] - pb[None], axis=-1).min()
    assert between > within
    with pytest.raises(ValueError, match='too few'):
        tsne.embed_2d(np.zeros((3, 8)))


def test_tsne_points_cover_every_ground_truth_character(word_lmdb):
    config = Config(write_config(word_lmdb.parent))
    charset = CharsetMapper(CHARSET, 5)
    dataset = ImageDataset(word_lmdb, charset, False)
    model = BaseVision(config).eval()
    points, labels = tsne.tsne_points(model, dataset, charset, max_samples=30, perplexity=5, batch_size=16)
    expected = ''.join(WORDS[k % len(WORDS)].lower() for k in range(30))
    assert labels == list(expected)
    assert points.shape == (len(expected), 2) and np.isfinite(points).all()


def test_command_line_two_models_side_by_side(word_lmdb, capsys):
    tmp = word_lmdb.parent
    base = save_checkpoint(tmp / 'abinet.pth', BaseVision(Config(write_config(tmp))))
    conclr = save_checkpoint(tmp / 'conclr.pth', ConCLR_Vision(Config(write_config(tmp, conclr=True))))
    out = tmp / 'pics' / 'tsne.png'
    status = tsne.main(['--config', str(write_config(tmp)), '--checkpoint', str(base), '--config2',
                        str(write_config(tmp, conclr=True)), '--checkpoint2', str(conclr), '--lmdb', str(word_lmdb),
                        '--output', str(out), '--max_samples', '20', '--perplexity', '5'])
    err = capsys.readouterr().err
    assert status == 0, err
    picture = cv2.imread(str(out))
    assert picture.shape == (700, 1400, 3)  # two 7-inch panels at 100 dpi
    assert 'ABINet-Vision: abinet.pth' in err and 'ConCLR-Vision: conclr.pth' in err

    status = tsne.main(['--config', str(write_config(tmp)), '--checkpoint', str(base), '--lmdb', str(word_lmdb),
                        '--output', str(tmp / 'one.png'), '--max_samples', '20', '--perplexity', '5'])
    assert status == 0 and cv2.imread(str(tmp / 'one.png')).shape == (700, 700, 3)

    status = tsne.main(['--config', str(write_config(tmp)), '--checkpoint', str(tmp / 'missing.pth'), '--lmdb',
                        str(word_lmdb), '--output', str(tmp / 'x.png')])
    assert status != 0 and 'not found' in capsys.readouterr().err
