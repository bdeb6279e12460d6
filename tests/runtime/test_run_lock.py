"""The work directory's lock: one live owner, named in the refusal; a dead owner's lock file taken over."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from runtime.run_lock import LOCK_NAME, RunLock, RunLockError, check_resume_source, live_owner


def _dead_pid() -> int:
    child = subprocess.Popen(['true'])
    child.wait()
    return child.pid


def test_a_second_acquire_is_refused_naming_the_owner(tmp_path):
    with RunLock.acquire(tmp_path / 'run') as lock:
        record = json.loads((tmp_path / 'run' / LOCK_NAME).read_text())
        assert record['pid'] == os.getpid() and lock.taken_over is None
        with pytest.raises(RunLockError, match=f'is in use by another run \\(pid {os.getpid()} on host '):
            RunLock.acquire(tmp_path / 'run')
        assert live_owner(tmp_path / 'run')['pid'] == os.getpid()
    assert not (tmp_path / 'run' / LOCK_NAME).exists()  # released: removed
    assert live_owner(tmp_path / 'run') is None
    RunLock.acquire(tmp_path / 'run').release()  # free again


def test_a_dead_runs_lock_is_taken_over_with_one_line(tmp_path):
    folder = tmp_path / 'run'
    folder.mkdir()
    dead = _dead_pid()
    (folder / LOCK_NAME).write_text(json.dumps({'pid': dead, 'host': os.uname().nodename, 'started': 'then'}))
    assert live_owner(folder) is None  # nobody holds it
    with RunLock.acquire(folder) as lock:
        assert lock.taken_over.startswith(f'took over the stale lock {folder / LOCK_NAME} of pid {dead} ')
        assert 'no longer alive' in lock.taken_over
        assert json.loads((folder / LOCK_NAME).read_text())['pid'] == os.getpid()


def test_resume_from_a_live_runs_folder_is_refused(tmp_path):
    with RunLock.acquire(tmp_path / 'first'):
        with pytest.raises(RunLockError, match='belongs to a live run'):
            check_resume_source(tmp_path / 'first', tmp_path / 'second')
        with pytest.raises(RunLockError, match='belongs to a live run'):
            check_resume_source(tmp_path / 'first' / 'run_0_2.pth', tmp_path / 'second')
        check_resume_source(tmp_path / 'first', tmp_path / 'first')  # its own folder: the lock decides
    check_resume_source(tmp_path / 'first', tmp_path / 'second')  # the first run ended


def test_a_lock_still_held_after_its_owner_died_says_so(tmp_path):
    """A forked child (a DataLoader worker) may hold the flock for a moment after its parent was killed."""
    with RunLock.acquire(tmp_path / 'run'):
        dead = _dead_pid()
        (tmp_path / 'run' / LOCK_NAME).write_text(json.dumps({'pid': dead, 'host': os.uname().nodename}))
        with pytest.raises(RunLockError, match=f'pid {dead} .*that process is gone but a child of it'):
            RunLock.acquire(tmp_path / 'run')
