"""Run a test function in several local processes joined in one gloo process group, and never hang.

`run_ranks('tests.callbacks.test_iteration:window_rank', 2, [...])` starts `python -m tests.multiprocess` once per
rank with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set (what torchrun would set); each process joins the
group and calls the function with its rank and the arguments. A job still running after `timeout` seconds is
killed (every process group it started included) and reported as timed out, so a distributed hang fails a test
instead of blocking the suite. `run_killable` does the same for one command (e.g. torchrun).
"""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (the target modules import fastai)

import datetime
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass

from configuration import REPO_ROOT
from tests.helpers import free_port

GROUP_TIMEOUT_S = 30  # a collective waiting longer than this raises in the worker (gloo's default is 30 min)


@dataclass
class Finished:
    """What a multi-process job left: exit codes (negative when killed), the output of each process, a timeout flag."""

    returncodes: list[int]
    outputs: list[str]
    timed_out: bool


def _wait_all(procs: list[subprocess.Popen], logs: list, timeout: float) -> Finished:
    timed_out = False
    try:
        for p in procs:
            p.wait(timeout=timeout)  # a generous bound for the whole job; no speed is asserted
    except subprocess.TimeoutExpired:
        timed_out = True
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read().decode(errors='replace'))
        log.close()
    return Finished([p.returncode for p in procs], outputs, timed_out)


def _start(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, object]:
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: killed with every child
    return proc, log


def run_killable(command: list[str], env_extra: dict[str, str] | None = None, timeout: float = 120) -> Finished:
    """Run one command (output merged into one text) and kill it with all its children after `timeout` s."""
    env = dict(os.environ, OMP_NUM_THREADS='1', **(env_extra or {}))
    proc, log = _start(command, env)
    return _wait_all([proc], [log], timeout)


def run_ranks(target: str, world_size: int, args: list[str], timeout: float = 120) -> Finished:
    """Call `module:function(rank, *args)` in `world_size` processes of one gloo group."""
    base = dict(os.environ, OMP_NUM_THREADS='1', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()),
                WORLD_SIZE=str(world_size))
    started = [_start([sys.executable, '-m', 'tests.multiprocess', target, *args],
                      dict(base, RANK=str(r), LOCAL_RANK=str(r))) for r in range(world_size)]
    return _wait_all([p for p, _ in started], [log for _, log in started], timeout)


def _worker(target: str, args: list[str]) -> None:
    import torch
    import torch.distributed as dist

    from runtime.distributed import cleanup_distributed

    torch.set_num_threads(1)
    module_name, _, function_name = target.partition(':')
    function = getattr(importlib.import_module(module_name), function_name)
    dist.init_process_group('gloo', init_method='env://', timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S))
    try:
        function(dist.get_rank(), *args)
    except BaseException:
        traceback.print_exc()
        cleanup_distributed(failed=True)
        _exit(1)
    cleanup_distributed()  # as main.py leaves: the ranks meet, then the group is destroyed
    _exit(0)


def _exit(status: int) -> None:
    """Exit without interpreter finalisation: gloo's worker threads can abort the process there (SIGABRT,
    "terminate called without an active exception") after the function under test has passed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == '__main__':
    _worker(sys.argv[1], sys.argv[2:])
