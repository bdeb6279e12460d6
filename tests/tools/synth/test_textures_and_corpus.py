import re

import cv2
import numpy as np
import pytest

from tools.lmdb_writer import write_lmdb
from tools.synth.corpus import Corpus, CorpusMix, apply_case
from tools.synth.textures import colour_pair, lmdb_images, load_textures, random_crop, texture_files


def test_colour_pair_finds_text_and_background():
    img = np.zeros((20, 60, 3), np.uint8)
    img[:] = (200, 180, 20)  # yellow sign
    img[5:15, 10:40] = (10, 20, 90)  # dark blue strokes, a quarter of the pixels
    text, background = colour_pair(img)
    np.testing.assert_allclose(text, (10, 20, 90), atol=0.5)
    np.testing.assert_allclose(background, (200, 180, 20), atol=0.5)
    light_text = 255 - img  # light strokes on dark: still the smaller cluster
    np.testing.assert_allclose(colour_pair(light_text)[0], (245, 235, 165), atol=0.5)


def test_random_crop_size_and_determinism():
    texture = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    a = random_crop(texture, 32, 90, np.random.default_rng(5))
    assert a.shape == (32, 90, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, random_crop(texture, 32, 90, np.random.default_rng(5)))


def test_textures_and_crops_load_from_folders_and_lmdbs(tmp_path):
    big = np.random.default_rng(1).integers(0, 256, (900, 600, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.jpg'), big)
    cv2.imwrite(str(tmp_path / 'tiny.png'), big[:4, :4])
    (tmp_path / 'notes.txt').write_text('not an image')
    files = texture_files([str(tmp_path)])
    assert [f.rsplit('/', 1)[1] for f in files] == ['a.jpg', 'tiny.png']
    loaded = load_textures(files, max_side=300)
    assert len(loaded) == 1 and max(loaded[0].shape[:2]) == 300
    ok, png = cv2.imencode('.png', big[:40, :120])
    write_lmdb(tmp_path / 'crops', iter([(png.tobytes(), 'word'), (b'broken', 'x')]), check_images=False)
    crops = lmdb_images(str(tmp_path / 'crops'))
    assert len(crops) == 1 and crops[0].shape == (40, 120, 3)


def test_corpus_mixes_kinds_of_text():
    corpus = Corpus(['street', 'open'], CorpusMix(words=1, random=1, numbers=1, mixed=1))
    rng = np.random.default_rng(0)
    labels = [corpus.sample(rng) for _ in range(400)]
    assert all(re.fullmatch('[0-9a-zA-Z]+', t) for t in labels)
    assert any(t.isdigit() for t in labels) and any(t in ('STREET', 'Street', 'street') for t in labels)
    assert any(re.fullmatch('(street|open)[0-9]+', t.lower()) for t in labels)
    words_only = Corpus(['street'], CorpusMix(words=1, random=0, numbers=0, mixed=0))
    assert {words_only.sample(rng).lower() for _ in range(20)} == {'street'}
    with pytest.raises(ValueError):
        Corpus([], CorpusMix())


def test_case_shares():
    rng = np.random.default_rng(0)
    cases = [apply_case('word', rng) for _ in range(3000)]
    assert abs(cases.count('word') / 3000 - 0.4) < 0.03 and abs(cases.count('WORD') / 3000 - 0.3) < 0.03
