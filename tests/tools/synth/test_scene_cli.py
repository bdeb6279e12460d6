"""tools/render_synthetic.py --style scene end to end: LMDBs whose labels come from the corpus (or --vocab), the
same bytes whatever the worker count, and one-line errors."""

import re

import cv2
import numpy as np
import pytest

from dataset import open_lmdb
from tools import render_synthetic as R
from tools.lmdb_writer import write_lmdb


def _read(path):
    with open_lmdb(path).begin() as txn:
        n = int(txn.get(b'num-samples'))
        return [(txn.get(f'image-{i:09d}'.encode()), txn.get(f'label-{i:09d}'.encode()).decode())
                for i in range(1, n + 1)]


@pytest.fixture(scope='module')
def crops(tmp_path_factory):
    path = tmp_path_factory.mktemp('crops') / 'real'
    rng = np.random.default_rng(0)
    samples = []
    for k in range(3):
        img = np.full((30, 90, 3), 60 + 60 * k, np.uint8)
        img[10:20, 10:80] = rng.integers(0, 256, 3, dtype=np.uint8)
        samples.append((cv2.imencode('.png', img)[1].tobytes(), f'w{k}'))
    write_lmdb(path, iter(samples), check_images=False)
    return path


def _render(out, crops, *extra):
    return R.main(['--output', str(out), '--num_train', '12', '--num_test', '3', '--seed', '4', '--style', 'scene',
                   '--texture_dirs', '--real_crops', str(crops), *extra])


def test_scene_lmdbs_are_the_same_bytes_with_one_or_two_workers(tmp_path, crops, capsys):
    assert _render(tmp_path / 'one', crops, '--workers', '1') == 0
    assert _render(tmp_path / 'two', crops, '--workers', '2') == 0
    one, two = _read(tmp_path / 'one' / 'train'), _read(tmp_path / 'two' / 'train')
    assert one == two and len(one) == 12 and len(_read(tmp_path / 'one' / 'test')) == 3
    assert all(re.fullmatch('[0-9a-zA-Z]+', label) for _, label in one)
    for png, _ in one:
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[0] == 32 and img.shape[1] >= 12
    assert '3 real crops' in capsys.readouterr().out


def test_a_vocabulary_file_sets_the_labels(tmp_path, crops):
    vocab = tmp_path / 'words.txt'
    vocab.write_text('exit\nopen\n')
    assert _render(tmp_path / 'v', crops, '--workers', '1', '--vocab', str(vocab)) == 0
    assert {label.lower() for _, label in _read(tmp_path / 'v' / 'train')} == {'exit', 'open'}


@pytest.mark.parametrize('extra, message', [
    (['--feature', 'bogus=1'], "unknown render feature 'bogus'"),
    (['--feature', 'curve=2'], 'curve: probability 2.0 is outside [0, 1]'),
    (['--real_crops', '/nonexistent/lmdb'], 'LMDB not found: /nonexistent/lmdb')])
def test_bad_scene_options_are_one_line(tmp_path, capsys, extra, message):
    assert R.main(['--output', str(tmp_path / 'o'), '--num_train', '2', '--num_test', '1', '--style', 'scene',
                   '--texture_dirs', *extra]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err and not (tmp_path / 'o').exists()
