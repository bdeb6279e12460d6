import logging
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from configuration import REPO_ROOT, Config
from dataset import (
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    dataset_kwargs,
    decode_image,
    get_dataset,
    named_test_sets,
)
from runtime.errors import one_line_error
from tools.lmdb_writer import write_lmdb
from training.loaders import seed_worker
from training.train import replaced_summary
from utils import CharsetMapper

BENCHMARKS = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'benchmarks'
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope='module')
def charset():
    return CharsetMapper(REPO_ROOT / 'data' / 'charset_36.txt')


def _png(rgb=(255, 0, 128), h=20, w=60):
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:] = rgb
    return cv2.imencode('.png', cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


def _noise_png(seed, h=20, w=60):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode('.png', img)[1].tobytes()


def _lmdb(path, samples):
    write_lmdb(path, samples, check_images=False)
    return path


def _normalised(rgb):
    return (np.asarray(rgb) / 255.0 - MEAN) / STD


def test_reads_images_and_targets(tmp_path, charset):
    path = _lmdb(tmp_path / 'db', [(_png((255, 0, 128)), 'Hello, World!'), (_png((10, 200, 30)), 'abc')])
    ds = ImageDataset(path, charset, is_training=False)
    assert len(ds) == 2 and ds.num_left_out == 0 and ds.name == 'db'
    image, (onehot, length) = ds[0]
    assert image.shape == (3, 32, 128) and image.dtype == torch.float32 and image.is_contiguous()
    # a flat colour image: every pixel is that colour, ImageNet-normalised, in RGB channel order
    expected = _normalised((255, 0, 128))
    for c in range(3):
        assert torch.allclose(image[c], torch.full((32, 128), float(expected[c])), atol=1e-5)
    assert onehot.shape == (26, 37) and onehot.dtype == torch.float32
    assert length.dtype == torch.long and length.dim() == 0 and int(length) == len('helloworld') + 1
    labels = onehot.argmax(-1).tolist()
    assert labels[:10] == [ord(c) - ord('a') + 1 for c in 'helloworld'] and set(labels[10:]) == {0}
    assert onehot.sum(-1).eq(1).all()
    assert ds.label(0) == 'helloworld' and ds.labels(1) == 'abc'


def test_grayscale_png_becomes_rgb(tmp_path, charset):
    gray = cv2.imencode('.png', np.full((10, 30), 77, dtype=np.uint8))[1].tobytes()
    ds = ImageDataset(_lmdb(tmp_path / 'db', [(gray, 'x')]), charset, is_training=False)
    image, _ = ds[0]
    expected = _normalised((77, 77, 77))
    for c in range(3):
        assert torch.allclose(image[c], torch.full((32, 128), float(expected[c])), atol=1e-5)


def test_transparent_png_is_composited_over_white():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (6, 9, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255  # fully transparent and fully opaque rows
    png = cv2.imencode('.png', cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))[1].tobytes()
    got = decode_image(png)
    expected = np.zeros((6, 9, 3), dtype=np.uint8)
    for y in range(6):
        for x in range(9):
            a = int(rgba[y, x, 3]) / 255
            for c in range(3):  # colour * alpha + white * (1 - alpha), rounded half up
                expected[y, x, c] = int(rgba[y, x, c] * a + 255 * (1 - a) + 0.5)
    assert got.shape == (6, 9, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 1 and (got[0] == 255).all()
    assert np.array_equal(got[1], rgba[1, :, :3])


def test_sixteen_bit_png_becomes_8_bit_and_an_invisible_one_white():
    deep = np.full((4, 5, 3), 40000, dtype=np.uint16)
    assert (decode_image(cv2.imencode('.png', deep)[1].tobytes()) == 40000 >> 8).all()
    invisible = np.zeros((4, 5, 4), dtype=np.uint8)  # black at alpha 0
    assert (decode_image(cv2.imencode('.png', invisible)[1].tobytes()) == 255).all()


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise DatasetError(f'/data/lmdb: image {i + 1} (image-{i + 1:09d}) cannot be decoded: a: b')


def test_error_from_a_worker_process_becomes_its_own_message():
    loader = DataLoader(_Broken(), batch_size=2, num_workers=1, worker_init_fn=seed_worker)
    with pytest.raises(DatasetError) as err:
        next(iter(loader))
    assert 'Traceback' in str(err.value)  # what torch hands over
    assert one_line_error(err.value) == '/data/lmdb: image 1 (image-000000001) cannot be decoded: a: b'
    assert one_line_error(ValueError('plain: message')) == 'plain: message'


def test_resize_is_bilinear_straight_to_size(tmp_path, charset):
    raw = np.random.default_rng(0).integers(0, 256, (17, 45, 3), dtype=np.uint8)
    png = cv2.imencode('.png', cv2.cvtColor(raw, cv2.COLOR_RGB2BGR))[1].tobytes()
    ds = ImageDataset(_lmdb(tmp_path / 'db', [(png, 'x')]), charset, is_training=False, img_h=16, img_w=40)
    image, _ = ds[0]
    resized = cv2.resize(raw, (40, 16), interpolation=cv2.INTER_LINEAR) / 255.0
    expected = ((resized - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-5)


def test_multiscales_keeps_aspect_and_pads(tmp_path, charset):
    ds = ImageDataset(_lmdb(tmp_path / 'db', [(_png((255, 255, 255), h=20, w=40), 'x')]), charset,
                      is_training=False, multiscales=True)
    image, _ = ds[0]
    white, black = _normalised((255, 255, 255)), _normalised((0, 0, 0))
    for c in range(3):  # 40x20 -> 64x32, then black padding up to 128
        assert torch.allclose(image[c, :, :64], torch.tensor(white[c], dtype=torch.float32), atol=1e-5)
        assert torch.allclose(image[c, :, 64:], torch.tensor(black[c], dtype=torch.float32), atol=1e-5)


def test_smoothed_labels(tmp_path, charset):
    ds = ImageDataset(_lmdb(tmp_path / 'db', [(_png(), 'ab')]), charset, is_training=False, smooth_label=True,
                      smooth_factor=0.1)
    _, (onehot, length) = ds[0]
    c = charset.num_classes
    hot = onehot.argmax(-1)
    assert torch.allclose(onehot.max(-1).values, torch.full((26,), 0.9 + 0.1 / c))
    assert torch.allclose(onehot.sum(-1), torch.ones(26))
    assert hot[:3].tolist() == [1, 2, 0] and int(length) == 3


def test_case_sensitive_charset_keeps_case(tmp_path):
    charset62 = CharsetMapper(REPO_ROOT / 'data' / 'charset_62.txt')
    path = _lmdb(tmp_path / 'db', [(_png(), 'Hello, World!')])
    assert ImageDataset(path, charset62, False, case_sensitive=True).label(0) == 'HelloWorld'
    assert ImageDataset(path, charset62, False, case_sensitive=False).label(0) == 'helloworld'


def test_test_mode_leaves_out_unusable_labels(tmp_path, charset):
    labels = ['first', '', '!!!', 'x' * 26, 'x' * 25, 'à', 'last']
    path = _lmdb(tmp_path / 'db', [(_png(), label) for label in labels])
    ds = ImageDataset(path, charset, is_training=False)
    assert ds.num_samples == 7 and ds.num_left_out == 4 and len(ds) == 3
    assert [ds.label(i) for i in range(3)] == ['first', 'x' * 25, 'last']
    assert [ds.lmdb_index(i) for i in range(3)] == [1, 5, 7]
    assert int(ds[2][1][1]) == len('last') + 1


def test_test_mode_corrupt_image_names_path_and_index(tmp_path, charset):
    path = _lmdb(tmp_path / 'db', [(_png(), 'good'), (b'\x89PNG broken', 'bad')])
    ds = ImageDataset(path, charset, is_training=False)
    ds[0]
    with pytest.raises(DatasetError) as err:
        ds[1]
    assert str(path) in str(err.value) and re.search(r'\b2\b', str(err.value))


def _capture(logger_name='conclr'):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(logger_name).addHandler(handler)
    return records, handler


def test_training_replaces_and_counts_bad_samples(tmp_path, charset):
    samples = [(_png(), 'one'), (b'garbage', 'two'), (_png(), '!!!'), (_png(), 'four')]
    ds = ImageDataset(_lmdb(tmp_path / 'db', samples), charset, is_training=True, data_aug=False, seed=0)
    assert len(ds) == 4
    records, handler = _capture()
    try:
        targets = [charset.decode(ds[i][1][0].argmax(-1)) for i in range(4)]
    finally:
        logging.getLogger('conclr').removeHandler(handler)
    assert targets[0] == 'one' and targets[3] == 'four'
    assert targets[1] in {'one', 'four'} and targets[2] in {'one', 'four'}
    assert ds.num_replaced >= 2  # a replacement may itself hit a bad sample
    messages = [r.getMessage() for r in records]
    assert any(str(ds.path) in m and 'sample 2' in m for m in messages)
    assert any('sample 3' in m for m in messages)


def test_training_count_is_shared_with_workers(tmp_path, charset):
    samples = [(_png(), f'w{i}') for i in range(10)]
    samples[4] = (b'garbage', 'bad')
    ds = ImageDataset(_lmdb(tmp_path / 'db', samples), charset, is_training=True, data_aug=False)
    loader = DataLoader(ds, batch_size=3, shuffle=False, num_workers=2, drop_last=True)
    batches = list(loader)
    assert len(batches) == 3
    images, (onehots, lengths) = batches[0]
    assert images.shape == (3, 3, 32, 128) and onehots.shape == (3, 26, 37) and lengths.shape == (3,)
    assert ds.num_replaced >= 1  # counted in a worker process, seen here


def _small_image_lmdb(path):
    """Colours say which sample came back: red 5 px high, green 6 px wide, blue 7 x 7, white 20 x 60."""
    samples = [(_png((255, 0, 0), h=5, w=60), 'tiny'), (_png((0, 255, 0), h=20, w=6), 'thin'),
               (_png((0, 0, 255), h=7, w=7), 'seven'), (_png((255, 255, 255)), 'plain')]
    return _lmdb(path, samples)


def test_training_skips_and_counts_images_with_a_side_of_six_px_or_less(tmp_path, charset):
    ds = ImageDataset(_small_image_lmdb(tmp_path / 'db'), charset, is_training=True, data_aug=False, seed=0)
    kept = {'seven': _normalised((0, 0, 255)), 'plain': _normalised((255, 255, 255))}
    records, handler = _capture()
    try:
        draws = [ds[i % 4] for i in range(40)]
    finally:
        logging.getLogger('conclr').removeHandler(handler)
    for image, (onehot, _) in draws:
        text = charset.decode(onehot.argmax(-1))
        assert text in kept  # the 5 px high and 6 px wide images never come back
        np.testing.assert_allclose(image[:, 16, 64].numpy(), kept[text], atol=1e-5)
    assert ds.num_small >= 20 and ds.num_replaced == 0  # every draw of position 0 or 1 replaced at least once
    messages = [r.getMessage() for r in records]
    assert any('sample 1' in m and '60 x 5 px' in m for m in messages)
    assert any('sample 2' in m and '6 x 20 px' in m for m in messages)


def test_test_mode_keeps_small_images(tmp_path, charset):
    ds = ImageDataset(_small_image_lmdb(tmp_path / 'db'), charset, is_training=False)
    assert [charset.decode(ds[i][1][0].argmax(-1)) for i in range(4)] == ['tiny', 'thin', 'seven', 'plain']
    np.testing.assert_allclose(ds[0][0][:, 16, 64].numpy(), _normalised((255, 0, 0)), atol=1e-5)


def test_small_image_count_is_shared_with_workers_and_summed_in_the_log_line(tmp_path, charset):
    samples = [(_png(), f'w{i}') for i in range(10)]
    samples[3] = (_png(h=5, w=40), 'tiny')
    samples[6] = (b'garbage', 'bad')
    ds = ImageDataset(_lmdb(tmp_path / 'db', samples), charset, is_training=True, data_aug=False)
    loader = DataLoader(ds, batch_size=5, shuffle=False, num_workers=2, drop_last=True)
    texts = [charset.decode(row.argmax(-1)) for _, (onehots, _) in loader for row in onehots]
    assert len(texts) == 10 and 'tiny' not in texts and 'bad' not in texts
    assert ds.num_small >= 1 and ds.num_replaced >= 1  # counted in worker processes, seen here
    line = replaced_summary(ConcatDataset([ds]), torch.device('cpu'))
    assert f'{ds.num_replaced} unreadable' in line and f'{ds.num_small} too small (a side of 6 px or less)' in line


def test_augmentation_differs_between_draws(tmp_path, charset):
    path = _lmdb(tmp_path / 'db', [(_noise_png(0), 'abc')])
    ds = ImageDataset(path, charset, is_training=True, data_aug=True)
    draws = {ds[0][0].numpy().tobytes() for _ in range(12)}
    assert len(draws) >= 3
    plain = ImageDataset(path, charset, is_training=True, data_aug=False)
    assert len({plain[0][0].numpy().tobytes() for _ in range(3)}) == 1


def test_augmentation_deterministic_under_seed(tmp_path, charset):
    path = _lmdb(tmp_path / 'db', [(_noise_png(0), 'abc'), (_noise_png(1), 'def')])
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        ds = ImageDataset(path, charset, is_training=True, seed=5)
        runs.append([ds[i % 2][0] for i in range(8)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_same_lmdb_opened_twice(tmp_path, charset):
    path = _lmdb(tmp_path / 'db', [(_png(), 'abc')])
    a = ImageDataset(path, charset, is_training=False)
    b = ImageDataset(str(path) + '/', charset, is_training=True, data_aug=False)
    assert torch.equal(a[0][0], b[0][0])


def test_missing_path(tmp_path, charset):
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / 'nope'))):
        ImageDataset(tmp_path / 'nope', charset, is_training=True)


def test_folder_that_is_not_an_lmdb(tmp_path, charset):
    (tmp_path / 'plain').mkdir()
    with pytest.raises(DatasetError, match='not an LMDB.*plain'):
        ImageDataset(tmp_path / 'plain', charset, is_training=False)


def test_empty_lmdb(tmp_path, charset):
    path = _lmdb(tmp_path / 'empty', [])
    with pytest.raises(DatasetError, match='empty.*empty'):
        ImageDataset(path, charset, is_training=True)


def test_lmdb_without_count(tmp_path, charset):
    import lmdb

    env = lmdb.open(str(tmp_path / 'other'), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b'key', b'value')
    env.close()
    with pytest.raises(DatasetError, match='num-samples.*other'):
        ImageDataset(tmp_path / 'other', charset, is_training=False)


def test_test_set_without_usable_labels(tmp_path, charset):
    with pytest.raises(DatasetError, match='no usable label'):
        ImageDataset(_lmdb(tmp_path / 'db', [(_png(), '!!!')]), charset, is_training=False)


@pytest.mark.parametrize('keep', [0.5, 0.25, 'header-only', 'garbage', 0])
def test_truncated_or_garbage_data_file(tmp_path, charset, keep):
    source = _lmdb(tmp_path / 'src', [(_noise_png(i, 40, 100), f'w{i}') for i in range(30)])
    bad = tmp_path / 'bad'
    shutil.copytree(source, bad)
    data = bad / 'data.mdb'
    size = data.stat().st_size
    if keep == 'garbage':
        data.write_bytes(os.urandom(size))
    elif keep == 'header-only':
        os.truncate(data, 8192)
    else:
        os.truncate(data, int(size * keep))
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        ImageDataset(bad, charset, is_training=False)


def test_get_dataset(tmp_path, charset):
    a = _lmdb(tmp_path / 'A', [(_png(), 'one'), (_png(), 'two')])
    b = _lmdb(tmp_path / 'B', [(_png(), 'three')])
    train = get_dataset([a, b], charset, is_training=True, data_aug=False)
    assert isinstance(train, ConcatDataset) and len(train) == 3
    test = named_test_sets([str(b) + '/', a], charset, img_w=64)
    assert list(test) == ['B', 'A'] and len(test['A']) == 2 and test['B'][0][0].shape == (3, 32, 64)
    (tmp_path / 'x').mkdir()
    c = _lmdb(tmp_path / 'x' / 'A', [(_png(), 'four')])
    with pytest.raises(DatasetError, match='share the name'):
        named_test_sets([a, c], charset)


def test_dataset_kwargs_from_config():
    config = Config()
    kwargs = dataset_kwargs(config, is_training=True)
    assert kwargs == dict(img_h=32, img_w=128, data_aug=True, case_sensitive=False, multiscales=False,
                          smooth_label=False, smooth_factor=0.1, seed=None)
    config.dataset_eval_case_sensitive = True
    assert dataset_kwargs(config, is_training=False)['case_sensitive'] is True
    assert dataset_kwargs(config, is_training=True)['case_sensitive'] is False


needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason='shared benchmarks absent')


@needs_benchmarks
def test_cute80(charset):
    ds = ImageDataset(BENCHMARKS / 'CUTE80', charset, is_training=False)
    assert ds.num_samples == 288
    assert ds.num_left_out == 1 and len(ds) == 287  # sample 235 is 'à', empty after cleaning
    assert all(re.fullmatch('[a-z0-9]{1,25}', ds.label(i)) for i in range(len(ds)))
    assert ds.label(0) == 'ronaldo'
    lo, hi = float(_normalised((0, 0, 0)).min()), float(_normalised((255, 255, 255)).max())
    for i in (0, 100, 286):
        image, (onehot, length) = ds[i]
        assert image.shape == (3, 32, 128) and image.dtype == torch.float32
        assert lo - 1e-4 <= image.min() and image.max() <= hi + 1e-4 and image.std() > 0.05
        assert charset.decode(onehot.argmax(-1)) == ds.label(i) and int(length) == len(ds.label(i)) + 1


@needs_benchmarks
def test_iiit5k_count(charset):
    ds = ImageDataset(BENCHMARKS / 'IIIT5k_3000', charset, is_training=False)
    assert ds.num_samples == 3000 and len(ds) == 3000
    assert ds[2999][0].shape == (3, 32, 128)


def test_a_test_sample_without_its_image_key_says_so(tmp_path):
    import lmdb

    from dataset import close_lmdb
    from tests.helpers import render_lmdb

    root = render_lmdb(tmp_path / 'lmdb', 3)
    with lmdb.open(str(root), map_size=1 << 26) as env, env.begin(write=True) as txn:
        txn.delete(b'image-000000002')
    charset = CharsetMapper(REPO_ROOT / 'data' / 'charset_36.txt')
    ds = ImageDataset(root, charset, is_training=False)
    with pytest.raises(DatasetError, match=r'sample 2 has a label but no image-000000002 key'):
        ds[1]
    close_lmdb(root)


def test_unknown_chars_of_a_label():
    charset = CharsetMapper(REPO_ROOT / 'data' / 'charset_36.txt')
    assert charset.unknown_chars('Дом-42!') == 'дом'  # punctuation is dropped by design, not reported
    assert charset.unknown_chars('straße') == 'ß'
    assert charset.unknown_chars('cat') == ''
