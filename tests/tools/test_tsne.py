"""tools/tsne.py: slot selection against hand-built glimpses, glimpses are the model's features of the
ground-truth slots, t-SNE keeps each character's glimpses together (nearest-neighbour label agreement on a
separable toy set), the plot draws each character's points in its colour with its label at their median, and the
tool writes its side-by-side PNG from rendered words in an LMDB."""

import os
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import torch
import yaml

from configuration import Config
from dataset import ImageDataset, close_lmdb
from modules.model_conclr import ConCLR_Vision
from modules.model_vision import BaseVision
from runtime.checkpoint import save_checkpoint
from tools import glimpse_tsne, tsne
from tools.lmdb_writer import write_lmdb
from tools.synth.plain import render_word
from utils import CharsetMapper

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
    rows, labels = glimpse_tsne.select_slots(features, gts)
    assert labels == ['a', 'b', 'x', 'y', 'z', 'w']
    np.testing.assert_array_equal(rows, [[0, 0], [1, -1], [10, 0], [11, -1], [12, -2], [13, -3]])

    rows, labels = glimpse_tsne.select_slots(features, gts, ['AB', 'xyzw', 'q'], only_correct=True)
    assert labels == ['a', 'b'] and rows.tolist() == [[0, 0], [1, -1]]
    rows, labels = glimpse_tsne.select_slots(features, gts, ['AB', 'xyzw', 'q'], only_correct=True, case_sensitive=True)
    assert labels == [] and rows.shape == (0, e)
    with pytest.raises(ValueError):
        glimpse_tsne.select_slots(features, gts, None, only_correct=True)


def test_embed_2d_keeps_separated_clusters_apart():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (15, 8))
    b = rng.normal(50.0, 1.0, (15, 8))
    points = glimpse_tsne.embed_2d(np.concatenate([a, b]), perplexity=5)
    assert points.shape == (30, 2) and np.isfinite(points).all()
    pa, pb = points[:15], points[15:]
    within = max(np.ptp(pa, axis=0).max(), np.ptp(pb, axis=0).max())
    between = np.linalg.norm(pa[:, None] - pb[None], axis=-1).min()
    assert between > within
    with pytest.raises(ValueError, match='too few'):
        glimpse_tsne.embed_2d(np.zeros((3, 8)))


def neighbour_agreement(points, labels):
    """Share of points whose nearest other point carries the same label."""
    labels = np.asarray(labels)
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(axis=1)] == labels).mean())


def test_embed_2d_keeps_glimpses_of_one_character_together():
    """Four characters, 12 noisy glimpses each around their own centre in 16-D: after t-SNE every point's nearest
    neighbour is of its own character; with the labels shuffled the same measure drops to chance."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0.0, 6.0, (4, 16))
    labels = [c for c in 'abcd' for _ in range(12)]
    vectors = np.concatenate([centre + rng.normal(0.0, 1.0, (12, 16)) for centre in centres])
    points = glimpse_tsne.embed_2d(vectors, perplexity=8)
    assert neighbour_agreement(vectors, labels) == 1.0  # the toy set is separable to begin with
    assert neighbour_agreement(points, labels) == 1.0
    assert neighbour_agreement(points, rng.permutation(labels)) < 0.6


def test_glimpses_are_the_models_features_of_the_ground_truth_slots(word_lmdb):
    config = Config(write_config(word_lmdb.parent))
    charset = CharsetMapper(CHARSET, 5)
    dataset = ImageDataset(word_lmdb, charset, False)
    torch.manual_seed(0)
    model = BaseVision(config).eval()
    vectors, labels = glimpse_tsne.collect_glimpses(model, dataset, charset, max_samples=12, batch_size=5)
    with torch.no_grad():
        feature = model(torch.stack([dataset[i][0] for i in range(12)]))['feature']
    words = [WORDS[k % len(WORDS)].lower() for k in range(12)]
    expected = np.concatenate([feature[n, :len(w)].numpy() for n, w in enumerate(words)])
    assert labels == list(''.join(words))
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)


def test_tsne_points_cover_every_ground_truth_character(word_lmdb):
    config = Config(write_config(word_lmdb.parent))
    charset = CharsetMapper(CHARSET, 5)
    dataset = ImageDataset(word_lmdb, charset, False)
    model = BaseVision(config).eval()
    points, labels = glimpse_tsne.tsne_points(model, dataset, charset, max_samples=30, perplexity=5, batch_size=16)
    expected = ''.join(WORDS[k % len(WORDS)].lower() for k in range(30))
    assert labels == list(expected)
    assert points.shape == (len(expected), 2) and np.isfinite(points).all()


def test_plot_draws_each_characters_points_in_its_colour_with_its_label(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    drawn = []
    close = plt.close
    monkeypatch.setattr(plt, 'close', lambda fig: (drawn.append(fig), close(fig)))
    rng = np.random.default_rng(2)
    panels = [('left', rng.normal(size=(7, 2)), list('abcabca')), ('right', rng.normal(size=(4, 2)), list('zz0z'))]
    chars = list('abcz0')
    glimpse_tsne.plot_panels(panels, tmp_path / 'p.png', chars)
    assert cv2.imread(str(tmp_path / 'p.png')).shape == (700, 1400, 3)
    colours = glimpse_tsne.char_colours(chars)
    (fig,) = drawn
    for ax, (title, points, labels) in zip(fig.axes, panels):
        assert ax.get_title() == f'{title}\n{len(points)} character glimpses'
        present = [c for c in chars if c in labels]
        assert len(ax.collections) == len(present)
        for scatter, c in zip(ax.collections, present):
            mine = points[np.asarray(labels) == c]
            np.testing.assert_allclose(scatter.get_offsets(), mine)
            np.testing.assert_allclose(scatter.get_facecolor()[0][:3], colours[c][:3])
        assert [t.get_text() for t in ax.texts] == present
        for text, c in zip(ax.texts, present):
            np.testing.assert_allclose(text.get_position(), np.median(points[np.asarray(labels) == c], axis=0))


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
    glimpses = sum(len(WORDS[k % len(WORDS)]) for k in range(20))  # every ground-truth character of 20 samples
    assert f'ABINet-Vision: abinet.pth: {glimpses} character glimpses' in err
    assert f'ConCLR-Vision: conclr.pth: {glimpses} character glimpses' in err

    status = tsne.main(['--config', str(write_config(tmp)), '--checkpoint', str(base), '--lmdb', str(word_lmdb),
                        '--output', str(tmp / 'one.png'), '--max_samples', '20', '--perplexity', '5'])
    assert status == 0 and cv2.imread(str(tmp / 'one.png')).shape == (700, 700, 3)

    status = tsne.main(['--config', str(write_config(tmp)), '--checkpoint', str(tmp / 'missing.pth'), '--lmdb',
                        str(word_lmdb), '--output', str(tmp / 'x.png')])
    assert status != 0 and 'not found' in capsys.readouterr().err
