"""Writing word images and their labels into an ABINet/clovaai-layout LMDB (`num-samples`, `image-%09d`,
`label-%09d`, 1-based); tools/create_lmdb_dataset.py is its command line."""

from __future__ import annotations

import os
import shutil
import warnings
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import lmdb
import numpy as np

INITIAL_MAP_SIZE = 1 << 30  # 1 GiB of address space; the file itself only grows as data is written
COMMIT_EVERY = 1000


def image_decodes(data: bytes) -> bool:
    """Whether `data` is an image OpenCV can decode (and is not empty)."""
    if not data:
        return False
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    return img is not None and img.size > 0


def _put_batch(env: lmdb.Environment, items: dict[bytes, bytes]) -> None:
    """Write one batch in a single transaction, doubling the map size until it fits."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items.items():
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()['map_size'] * 2)


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def write_lmdb(output_dir: str | os.PathLike, samples: Iterable[tuple[bytes, str]], check_images: bool = True,
               overwrite: bool = False) -> int:
    """Write (encoded image, label) pairs to an LMDB at `output_dir`; return the number of samples written.

    Undecodable images are skipped with a warning when `check_images`. The LMDB is built in a temporary
    sibling folder and renamed into place at the end, so `output_dir` never holds a half-written LMDB.
    An existing `output_dir` is an error unless `overwrite`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f'{output_dir} already exists (pass overwrite=True / --overwrite to replace it)')
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = output_dir.parent / f'.{output_dir.name}.tmp-{os.getpid()}'
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    count = 0
    try:
        env = lmdb.open(str(tmp_dir), map_size=INITIAL_MAP_SIZE, subdir=True, meminit=False)
        try:
            position = 0
            for batch in _batched(samples, COMMIT_EVERY):
                items = {}
                for image, label in batch:
                    position += 1
                    if check_images and not image_decodes(image):
                        warnings.warn(f'{output_dir}: sample {position} ({label!r}) has an undecodable image; skipped',
                                      stacklevel=2)
                        continue
                    count += 1
                    items[f'image-{count:09d}'.encode()] = bytes(image)
                    items[f'label-{count:09d}'.encode()] = label.encode('utf-8')
                _put_batch(env, items)
            _put_batch(env, {b'num-samples': str(count).encode()})
            env.sync()
        finally:
            env.close()
        lock = tmp_dir / 'lock.mdb'
        if lock.exists():
            lock.unlink()  # readers open without a lock file; a stale one is just clutter
        if output_dir.exists():
            old_dir = output_dir.parent / f'.{output_dir.name}.old-{os.getpid()}'
            output_dir.rename(old_dir)
            tmp_dir.rename(output_dir)
            shutil.rmtree(old_dir)
        else:
            tmp_dir.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return count
