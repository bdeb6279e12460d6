"""runtime/atomic_file: a file is replaced whole or not at all."""

import json
import math

import pytest

from runtime.atomic_file import atomic_open, write_json_atomically, write_text_atomically


def test_an_error_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'run.json'
    path.write_text('{"old": 1}')
    with pytest.raises(RuntimeError, match='disk gone'):
        with atomic_open(path) as f:
            f.write(b'{"new": ')
            raise RuntimeError('disk gone')
    assert path.read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['run.json']


def test_json_round_trips_with_nan_into_a_new_folder(tmp_path):
    path = tmp_path / 'new' / 'folder' / 'results.json'
    write_json_atomically(path, {'cwr': float('nan'), 'runs': [1, 2], 'name': 'ünïcode'})
    back = json.loads(path.read_text(encoding='utf-8'))
    assert math.isnan(back['cwr']) and back['runs'] == [1, 2] and back['name'] == 'ünïcode'
    write_text_atomically(path, 'second')
    assert path.read_text() == 'second' and sorted(p.name for p in path.parent.iterdir()) == ['results.json']

