"""Files written whole or not at all: the bytes go to a hidden temporary file beside the target, which a rename then
puts in place, so a crash mid-write leaves the old file (or none), never a truncated one."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content to; it replaces `path` only when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, 'wb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path) as f:
        f.write(text.encode('utf-8'))
    return Path(path)


def write_json_atomically(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically (NaN allowed, as json.dumps writes it)."""
    return write_text_atomically(path, json.dumps(data, indent=1, allow_nan=True))


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new hidden file beside `path`, with the permissions the process umask gives any other output (mkstemp's
    would be 0600)."""
    while True:
        tmp = path.parent / f'.{path.name}.{secrets.token_hex(4)}.tmp'
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
