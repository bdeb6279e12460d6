"""A training run owns its work directory while it lives: `<workdir>/.run.lock`, held with flock and naming its owner.

The file records the owner (pid, host, start time, command line). The kernel releases the flock when the process
dies however it dies, so a lock file that no process holds is the stale record of a crashed run: the next run
takes it over with one log line. A second run that finds it held refuses with one line naming the owner. The
record also lets a run refuse to `--resume` from a folder another live run is still writing.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from configuration import ConfigError

LOCK_NAME = '.run.lock'


class RunLockError(ConfigError):
    """The work directory belongs to another live run."""


def _owner_record() -> dict[str, Any]:
    return {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
            'command': ' '.join(sys.argv)}


def _read_record(path: Path) -> dict[str, Any]:
    """The owner record of a lock file ({} when empty or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding='utf-8') or '{}')
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_owner(record: dict[str, Any]) -> str:
    """'pid 123 on host h, started 2026-12-06 13:50:00' (or 'an unknown process')."""
    if not record.get('pid'):
        return 'an unknown process'
    return f'pid {record["pid"]} on host {record.get("host", "?")}, started {record.get("started", "?")}'


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _held_elsewhere(path: Path) -> bool:
    """Whether another open file description holds the flock of `path` (False when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's shared lock
    return False


def live_owner(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The owner record of the live run that holds `folder`'s lock, or None when no live run holds it."""
    path = Path(folder) / LOCK_NAME
    return _read_record(path) if _held_elsewhere(path) else None


class RunLock:
    """The held lock of one work directory; `release()` (or the with-block's end) gives it up."""

    def __init__(self, path: Path, fd: int, taken_over: str | None = None):
        self.path, self.fd = path, fd
        self.taken_over = taken_over  # the one line to log when a dead run's lock file was taken over

    @classmethod
    def acquire(cls, folder: str | os.PathLike) -> RunLock:
        """Create `folder` if needed and hold its lock; RunLockError naming the owner when a live run holds it.
        A lock file left by a dead run is taken over (`taken_over` then says so in one line)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                record = _read_record(path)
                gone = record.get('host') == socket.gethostname() and not pid_alive(int(record.get('pid') or 0))
                hint = ('that process is gone but a child of it (a DataLoader worker) still holds the lock: try again '
                        'in a few seconds' if gone else 'wait for it to end, or choose another --name')
                raise RunLockError(f'work directory {folder} is in use by another run ({describe_owner(record)}; '
                                   f'lock file {path}): {hint}') from None
            try:  # the holder before us may have removed the file between our open and our flock: start again
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous, taken_over = _read_record(path), None
        if previous:
            alive = previous.get('host') == socket.gethostname() and pid_alive(int(previous.get('pid') or 0))
            taken_over = (f'took over the stale lock {path} of {describe_owner(previous)} ('
                          + ('that pid now belongs to another process' if alive else 'no longer alive')
                          + '): that run ended without releasing it')
        record = json.dumps(_owner_record()).encode('utf-8')
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        return cls(path, fd, taken_over)

    def release(self) -> None:
        """Remove the lock file and give up the lock (idempotent)."""
        if self.fd < 0:
            return
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                self.path.unlink()
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)  # also for DataLoader workers that inherited the descriptor
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_resume_source(resume: str | os.PathLike | None, own_folder: str | os.PathLike) -> None:
    """RunLockError when `--resume` points into a folder (other than this run's own) that a live run is writing."""
    if not resume:
        return
    path = Path(resume)
    folder = path if path.is_dir() else path.parent
    if folder.resolve() == Path(own_folder).resolve():
        return  # this run's own folder: its lock decides
    owner = live_owner(folder)
    if owner is not None:
        raise RunLockError(f'--resume {resume}: {folder} belongs to a live run ({describe_owner(owner)}) that is '
                           'still writing it: wait for it to end or stop it first')
