import os

import matplotlib
import numpy as np

from tools.synth import text_layer as L

FONT = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'fonts', 'ttf', 'DejaVuSans.ttf')


def test_spacing_widens_the_word_and_keeps_its_ink():
    tight, wide = L.draw_text('word', FONT, 40), L.draw_text('word', FONT, 40, spacing=0.3)
    assert tight.shape[0] == wide.shape[0]
    # three gaps of 0.3 x 40 px each, give or take a pixel per glyph
    assert abs(wide.shape[1] - tight.shape[1] - 3 * 12) <= 4
    assert abs(wide.sum() - tight.sum()) / tight.sum() < 0.05


def test_curve_moves_columns_and_keeps_ink():
    mask = np.zeros((10, 21), np.float32)
    mask[4:6, :] = 1.0  # a straight bar
    bent = L.curve(mask, 0.5)
    assert abs(bent.sum() - mask.sum()) / mask.sum() < 0.05
    rows = [np.average(np.arange(bent.shape[0]), weights=bent[:, x]) for x in (0, 10, 20)]
    # an arc: the ends sit 5 rows (0.5 x height) below the middle
    assert abs((rows[0] - rows[1]) - 5) < 0.6 and abs(rows[0] - rows[2]) < 0.1


def test_border_shadow_and_extrusion_stay_outside_the_strokes():
    mask = np.zeros((20, 20), np.float32)
    mask[8:12, 8:12] = 1.0
    ring = L.border(mask, 2)
    assert (ring * mask).sum() == 0
    ys, xs = np.nonzero(ring)
    # every ring pixel lies within OpenCV's 5 x 5 ellipse (offsets up to (1, 2)) of the square [8, 11]^2, and the
    # whole 1-px frame around the square is in the ring
    dy, dx = np.maximum(0, np.maximum(8 - ys, ys - 11)), np.maximum(0, np.maximum(8 - xs, xs - 11))
    assert (np.hypot(dy, dx) <= np.sqrt(5) + 1e-6).all() and (np.hypot(dy, dx) >= 1).all()
    assert ring[7, 8:12].all() and ring[12, 8:12].all() and ring[8:12, 7].all() and ring[8:12, 12].all()
    assert (L.shadow(mask, 3, 3, 0.0) * mask).sum() == 0
    assert L.shadow(mask, 3, 3, 0.0)[14, 14] == 1.0
    body = L.extrusion(mask, 1, 1, 3)
    assert (body * mask).sum() == 0 and body[14, 14] == 1.0 and body[15, 15] == 0.0
