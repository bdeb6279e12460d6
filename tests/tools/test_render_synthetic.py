import os
import re
from collections import Counter

import matplotlib
import numpy as np
import pytest

from configuration import REPO_ROOT
from dataset import ImageDataset, open_lmdb
from tools import render_synthetic as R
from tools.synth import fonts as synth_fonts
from tools.synth import plain, splits, vocabulary
from utils import CharsetMapper

MPL_FONTS = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'fonts', 'ttf')


@pytest.fixture(scope='module')
def fonts():
    found = synth_fonts.find_fonts()
    assert found, 'matplotlib ships DejaVu fonts, so at least those must be found'
    return found


def test_symbol_fonts_are_rejected():
    assert synth_fonts.font_renders(os.path.join(MPL_FONTS, 'DejaVuSans.ttf'))
    assert synth_fonts.font_renders(os.path.join(MPL_FONTS, 'cmr10.ttf'))
    for name in ('cmex10.ttf', 'cmsy10.ttf', 'STIXSizOneSymReg.ttf', 'DejaVuSansDisplay.ttf',
                 'LastResortHE-Regular.ttf'):
        path = os.path.join(MPL_FONTS, name)
        if os.path.exists(path):
            assert not synth_fonts.font_renders(path), name


def test_found_fonts_are_distinct_faces(fonts):
    names = [os.path.basename(f) for f in fonts]
    assert 'DejaVuSans.ttf' in names and 'cmsy10.ttf' not in names
    assert len(set(names)) == len(names)  # matplotlib's DejaVu copies win over /usr/share/fonts duplicates


def test_render_shape_dtype_and_determinism(fonts):
    a = plain.render_word('Hello', fonts[0], np.random.default_rng(7))
    b = plain.render_word('Hello', fonts[0], np.random.default_rng(7))
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[0] == 32 and a.shape[2] == 3
    np.testing.assert_array_equal(a, b)
    c = plain.render_word('Hello', fonts[0], np.random.default_rng(8))
    assert c.shape != a.shape or not np.array_equal(a, c)
    assert plain.render_word('Hello', fonts[0], np.random.default_rng(7), height=48).shape[0] == 48


def test_width_follows_text(fonts):
    short = plain.render_word('ab', fonts[0], np.random.default_rng(3))
    long = plain.render_word('abcdefghijkl', fonts[0], np.random.default_rng(3))
    assert long.shape[1] > 3 * short.shape[1]


def test_fonts_differ(fonts):
    regular = os.path.join(MPL_FONTS, 'DejaVuSans.ttf')
    mono = os.path.join(MPL_FONTS, 'DejaVuSansMono.ttf')
    a = plain.render_word('minimum', regular, np.random.default_rng(0))
    b = plain.render_word('minimum', mono, np.random.default_rng(0))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_text_stands_out_from_background(fonts):
    # The brightest and darkest tenths of the grey image differ by far more than the noise could.
    for seed in range(10):
        img = plain.render_word('Wordplay', fonts[seed % len(fonts)], np.random.default_rng(seed)).astype(float)
        gray = np.sort((img @ [0.299, 0.587, 0.114]).ravel())
        tenth = len(gray) // 10
        assert gray[-tenth:].mean() - gray[:tenth].mean() > 40


def test_vocabulary_words():
    words = vocabulary.make_vocabulary(300, 4, 9, np.random.default_rng(0))
    assert len(words) == len(set(words)) == 300
    assert all(re.fullmatch('[a-z]{4,9}', w) for w in words)
    assert words == vocabulary.make_vocabulary(300, 4, 9, np.random.default_rng(0))
    assert words != vocabulary.make_vocabulary(300, 4, 9, np.random.default_rng(1))


def test_vocabulary_random_strings():
    words = vocabulary.make_vocabulary(300, 3, 6, np.random.default_rng(0), kind='random')
    assert len(set(words)) == 300 and all(re.fullmatch('[a-z0-9]{3,6}', w) for w in words)
    assert sum(any(c.isdigit() for c in w) for w in words) > 100
    with pytest.raises(ValueError, match='kind'):
        vocabulary.make_vocabulary(3, 3, 6, np.random.default_rng(0), kind='nonsense')


def test_capitalisation_styles():
    rng = np.random.default_rng(0)
    styles = Counter()
    for _ in range(400):
        w = vocabulary.apply_case('word', rng)
        styles[w] += 1
    assert set(styles) == {'word', 'Word', 'WORD'}
    assert 150 < styles['word'] < 250


def _labels(path):
    with open_lmdb(path).begin() as txn:  # the shared per-process cache: lmdb refuses a second open
        n = int(txn.get(b'num-samples'))
        out = [(txn.get(f'label-{i:09d}'.encode()).decode(), txn.get(f'image-{i:09d}'.encode()))
               for i in range(1, n + 1)]
    return out


def test_cli_writes_readable_lmdbs(tmp_path, capsys):
    out = tmp_path / 'synth'
    args = ['--output', str(out), '--num_train', '300', '--num_test', '20', '--seed', '3', '--vocab_size', '50',
            '--vocab_out', str(tmp_path / 'vocab.txt')]
    assert R.main(args + ['--workers', '2']) == 0
    printed = capsys.readouterr().out
    assert 'wrote 300 images' in printed and 'wrote 20 images' in printed and 'fonts used' in printed
    vocab = (tmp_path / 'vocab.txt').read_text().split()
    assert len(vocab) == 50

    charset = CharsetMapper(REPO_ROOT / 'data' / 'charset_36.txt')
    train = ImageDataset(out / 'train', charset, is_training=False)
    test = ImageDataset(out / 'test', charset, is_training=False)
    assert len(train) == 300 and len(test) == 20 and train.num_left_out == 0
    assert all(train.label(i) in vocab for i in range(len(train)))
    image, (onehot, length) = test[0]
    assert image.shape == (3, 32, 128) and int(length) == len(test.label(0)) + 1

    # held-out test renders are new images; output does not depend on the number of workers
    train_items, test_items = _labels(out / 'train'), _labels(out / 'test')
    assert not {img for _, img in test_items} & {img for _, img in train_items}
    assert R.main(args[:1] + [str(tmp_path / 'again')] + args[2:] + ['--workers', '1']) == 0
    assert _labels(tmp_path / 'again' / 'train') == train_items


def test_cli_reads_vocab_file_and_refuses_to_overwrite(tmp_path, capsys):
    vocab = tmp_path / 'words.txt'
    vocab.write_text('alpha\nBeta\n\nalpha\n')
    args = ['--output', str(tmp_path / 's'), '--num_train', '10', '--num_test', '3', '--vocab', str(vocab),
            '--workers', '1']
    assert R.main(args) == 0
    labels = {label.lower() for label, _ in _labels(tmp_path / 's' / 'train')}
    assert labels <= {'alpha', 'beta'}
    capsys.readouterr()
    assert R.main(args) == 1
    assert 'already exists' in capsys.readouterr().err
    assert R.main(args + ['--overwrite']) == 0
    assert R.main(['--output', str(tmp_path / 't'), '--vocab', str(tmp_path / 'none.txt')]) == 1


CYRILLIC_WORDS = ['дом', 'кот', 'река', 'свет', 'звезда', 'молоко', 'окно', 'жизнь', 'щука', 'юла', 'эхо', 'шарф']


def test_cyrillic_vocabulary_renders_only_with_fonts_that_cover_each_label(tmp_path, capsys):
    """matplotlib's DejaVu faces have Cyrillic, its cmr10 / STIX faces do not: every render's font must still hold
    every character of its label, and the renderer says how many fonts cover the whole vocabulary."""
    fonts = synth_fonts.find_fonts()
    alphabet = synth_fonts.text_alphabet(CYRILLIC_WORDS)
    covering = [f for f in fonts if synth_fonts.font_covers(f, alphabet)]
    assert 0 < len(covering) < len(fonts)  # the case that drew empty boxes before: some fonts lack the letters
    splits._init_worker(CYRILLIC_WORDS, fonts, 32)
    rendered = [item for chunk in range(6) for item in splits._render_chunk((0, 0, chunk, 20))]
    assert {text.lower() for _, text, _ in rendered} <= set(CYRILLIC_WORDS)
    assert all(synth_fonts.font_covers(fonts[index], text) for _, text, index in rendered)

    vocab = tmp_path / 'words.txt'
    vocab.write_text('\n'.join(CYRILLIC_WORDS), encoding='utf-8')
    assert R.main(['--output', str(tmp_path / 's'), '--num_train', '30', '--num_test', '5', '--vocab', str(vocab),
                   '--workers', '1']) == 0
    printed = capsys.readouterr().out
    assert (f'{len(covering)} of {len(fonts)} fonts cover the whole vocabulary ({len(alphabet)} characters); the '
            'others draw only the labels whose characters they all have') in printed
