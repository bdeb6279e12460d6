"""Run the project's scripts as a user would (`python main.py ...`), without paying the imports for every run.

A multiprocessing fork server imports main, demo and the tools once; every run is a fresh process forked from it
that executes the script as `__main__` (runpy; the repository root is on the path, as for `python -m tools.x`)
with its own argv, working directory, environment, stdout and stderr files, in a process group of its own (a
signal to the group reaches its DataLoader workers, as a terminal's Ctrl-C does). An uncaught exception prints a
traceback and exits 1, `sys.exit(n)` exits n and a signal the process does not handle kills it (a negative
status, as subprocess reports it), just as for `python script.py`.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from configuration import REPO_ROOT

PRELOAD = ['main', 'demo', 'tools.export_onnx', 'tools.create_lmdb_dataset', 'tests.helpers']
_context = multiprocessing.get_context('forkserver')
_context.set_forkserver_preload(PRELOAD)


@dataclass
class Finished:
    """What a run left: its exit status and its output."""

    status: int
    stdout: str
    stderr: str


def _run_script(script: str, argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    os.setpgid(0, 0)
    multiprocessing.set_start_method(None, force=True)  # the platform's default, as in a fresh interpreter
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdout = open(1, 'w', buffering=1, encoding='utf-8', closefd=False)
    sys.stderr = open(2, 'w', buffering=1, encoding='utf-8', closefd=False)
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name='__main__')


class Run:
    """One started script; `finish()` waits for it."""

    def __init__(self, script: str, argv: list[str], folder: Path, env: dict[str, str] | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / 'stdout.txt', folder / 'stderr.txt'
        full_env = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
        self.process = _context.Process(target=_run_script, args=(
            str(REPO_ROOT / script), [str(a) for a in argv], str(REPO_ROOT), full_env, str(self.out), str(self.err)))
        self.process.start()

    def wait_for(self, ready: Callable[[], bool], timeout: float = 120) -> None:
        """Poll until `ready()` holds; fails when the run ends first or the time is up."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.process.is_alive():
                raise AssertionError(f'ended first with {self.process.exitcode}: {self.err.read_text()[-2000:]}')
            if time.monotonic() > deadline:
                raise AssertionError('waited too long')
            time.sleep(0.02)

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the run's process group (the script and its workers), as a terminal's Ctrl-C does."""
        os.killpg(self.process.pid, signum)

    def finish(self, timeout: float = 240) -> Finished:
        """Wait for the end (kill the group when it takes too long) and read what it wrote."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.signal_group(signal.SIGKILL)
            self.process.join()
            raise AssertionError(f'did not end within {timeout} s: {self.err.read_text()[-2000:]}')
        return Finished(self.process.exitcode, self.out.read_text(), self.err.read_text())


def run(script: str, argv: list[str], folder: Path, env: dict[str, str] | None = None,
        timeout: float = 240) -> Finished:
    """Run a script of the repository to its end."""
    return Run(script, argv, folder, env).finish(timeout)
