"""tools/sample_grid.py: one column per LMDB, each image fitted into its cell with the label under it."""

import numpy as np
from PIL import Image

from tests.helpers import render_lmdb
from tools import sample_grid


def test_grid_has_a_column_per_lmdb_and_a_row_per_sample(tmp_path):
    a = render_lmdb(tmp_path / 'a', 6, seed=1)
    b = render_lmdb(tmp_path / 'b', 3, seed=2)
    out = tmp_path / 'grid.png'
    assert sample_grid.main(['--lmdb', str(a), str(b), '--rows', '4', '--output', str(out)]) == 0
    img = np.asarray(Image.open(out))
    cell_h = sample_grid.CELL_H + sample_grid.LABEL_H
    assert img.shape[:2] == (sample_grid.LABEL_H + 4 * cell_h, 2 * (sample_grid.CELL_W + 8))
    # column b has 3 samples: its fourth cell stays white, column a's is drawn
    fourth = slice(sample_grid.LABEL_H + 3 * cell_h, sample_grid.LABEL_H + 3 * cell_h + sample_grid.CELL_H)
    assert (img[fourth, sample_grid.CELL_W + 8:] == 255).all()
    assert (img[fourth, :sample_grid.CELL_W] != 255).any()


def test_samples_are_distinct_and_seeded(tmp_path):
    db = render_lmdb(tmp_path / 'db', 10, seed=1, words=[f'w{i}' for i in range(10)])
    labels = [label for _, label in sample_grid.lmdb_samples(str(db), 5, seed=3)]
    assert len(set(labels)) == 5
    assert labels == [label for _, label in sample_grid.lmdb_samples(str(db), 5, seed=3)]


def test_missing_lmdb_is_one_line(tmp_path, capsys):
    assert sample_grid.main(['--lmdb', str(tmp_path / 'none'), '--output', str(tmp_path / 'g.png')]) == 2
    assert capsys.readouterr().err.count('\n') == 1 and not (tmp_path / 'g.png').exists()
