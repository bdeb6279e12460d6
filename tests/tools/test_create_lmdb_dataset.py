import os

import cv2
import lmdb
import numpy as np
import pytest

from tools import create_lmdb_dataset as C
from tools import lmdb_writer


def _png(value, h=8, w=20):
    ok, buf = cv2.imencode('.png', np.full((h, w, 3), value, dtype=np.uint8))
    assert ok
    return buf.tobytes()


def _read_all(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor())
    finally:
        env.close()


def test_layout_is_one_based_with_count(tmp_path):
    samples = [(_png(i * 10), f'word{i}') for i in range(5)]
    assert lmdb_writer.write_lmdb(tmp_path / 'db', samples) == 5
    kv = _read_all(tmp_path / 'db')
    assert kv[b'num-samples'] == b'5'
    assert set(kv) == {b'num-samples'} | {f'{k}-{i:09d}'.encode() for k in ('image', 'label') for i in range(1, 6)}
    for i, (img, label) in enumerate(samples, 1):
        assert kv[f'image-{i:09d}'.encode()] == img
        assert kv[f'label-{i:09d}'.encode()].decode('utf-8') == label


def test_unicode_label_round_trip(tmp_path):
    lmdb_writer.write_lmdb(tmp_path / 'db', [(_png(0), 'Grenier à Pain')])
    assert _read_all(tmp_path / 'db')[b'label-000000001'].decode('utf-8') == 'Grenier à Pain'


def test_undecodable_images_are_skipped_with_warning(tmp_path):
    samples = [(_png(1), 'a'), (b'not an image', 'b'), (b'', 'c'), (_png(2), 'd')]
    with pytest.warns(UserWarning, match='undecodable'):
        count = lmdb_writer.write_lmdb(tmp_path / 'db', samples)
    assert count == 2
    kv = _read_all(tmp_path / 'db')
    assert kv[b'num-samples'] == b'2'
    assert kv[b'label-000000001'] == b'a' and kv[b'label-000000002'] == b'd'


def test_no_check_keeps_everything(tmp_path):
    assert lmdb_writer.write_lmdb(tmp_path / 'db', [(b'junk', 'x'), (_png(3), 'y')], check_images=False) == 2
    assert _read_all(tmp_path / 'db')[b'image-000000001'] == b'junk'


def test_empty_input_writes_zero_count(tmp_path):
    assert lmdb_writer.write_lmdb(tmp_path / 'db', []) == 0
    assert _read_all(tmp_path / 'db') == {b'num-samples': b'0'}


def test_no_temporary_or_lock_files_left(tmp_path):
    lmdb_writer.write_lmdb(tmp_path / 'db', [(_png(0), 'a')])
    assert os.listdir(tmp_path) == ['db']
    assert os.listdir(tmp_path / 'db') == ['data.mdb']


def test_crash_midway_leaves_nothing(tmp_path):
    def samples():
        yield _png(0), 'a'
        raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        lmdb_writer.write_lmdb(tmp_path / 'db', samples())
    assert os.listdir(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path):
    lmdb_writer.write_lmdb(tmp_path / 'db', [(_png(0), 'old')])
    with pytest.raises(FileExistsError, match='db'):
        lmdb_writer.write_lmdb(tmp_path / 'db', [(_png(0), 'new')])
    lmdb_writer.write_lmdb(tmp_path / 'db', [(_png(0), 'new'), (_png(1), 'two')], overwrite=True)
    kv = _read_all(tmp_path / 'db')
    assert kv[b'num-samples'] == b'2' and kv[b'label-000000001'] == b'new'
    assert os.listdir(tmp_path) == ['db']


def test_map_grows_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(lmdb_writer, 'INITIAL_MAP_SIZE', 64 * 1024)
    monkeypatch.setattr(lmdb_writer, 'COMMIT_EVERY', 7)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    big = cv2.imencode('.png', noise)[1].tobytes()  # ~12 KiB that PNG cannot compress
    assert lmdb_writer.write_lmdb(tmp_path / 'db', [(big, str(i)) for i in range(40)]) == 40
    kv = _read_all(tmp_path / 'db')
    assert kv[b'num-samples'] == b'40' and kv[b'image-000000040'] == big


def _make_gt(tmp_path, lines):
    images = tmp_path / 'images'
    (images / 'sub').mkdir(parents=True)
    (images / 'sub' / 'a.png').write_bytes(_png(10))
    (images / 'b.png').write_bytes(_png(200))
    gt = tmp_path / 'gt.txt'
    gt.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
    return images, gt


def test_cli_writes_lmdb(tmp_path, capsys):
    images, gt = _make_gt(tmp_path, ['sub/a.png\tHello World', '', 'b.png\tcafé'])
    rc = C.main(['--input_dir', str(images), '--gt_file', str(gt), '--output', str(tmp_path / 'out')])
    assert rc == 0
    kv = _read_all(tmp_path / 'out')
    assert kv[b'num-samples'] == b'2'
    assert kv[b'label-000000001'].decode() == 'Hello World' and kv[b'label-000000002'].decode() == 'café'
    assert kv[b'image-000000002'] == (images / 'b.png').read_bytes()
    assert 'wrote 2 of 2' in capsys.readouterr().out


def test_cli_missing_image_is_skipped(tmp_path):
    images, gt = _make_gt(tmp_path, ['sub/a.png\ta', 'missing.png\tb'])
    with pytest.warns(UserWarning, match='missing.png'):
        rc = C.main(['--input_dir', str(images), '--gt_file', str(gt), '--output', str(tmp_path / 'out')])
    assert rc == 0 and _read_all(tmp_path / 'out')[b'num-samples'] == b'1'


@pytest.mark.parametrize('case', ['no_gt', 'no_dir', 'bad_line'])
def test_cli_errors_are_one_line(tmp_path, capsys, case):
    images, gt = _make_gt(tmp_path, ['sub/a.png\ta', 'b.png has no tab'])
    args = {'no_gt': [str(images), str(tmp_path / 'nope.txt')], 'no_dir': [str(tmp_path / 'nodir'), str(gt)],
            'bad_line': [str(images), str(gt)]}[case]
    rc = C.main(['--input_dir', args[0], '--gt_file', args[1], '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith('error:') and '\n' not in err
    assert {'no_gt': 'nope.txt', 'no_dir': 'nodir', 'bad_line': 'gt.txt:2'}[case] in err
    assert not (tmp_path / 'out').exists()
