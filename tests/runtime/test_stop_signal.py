"""stop_signal: signals raise outside the training loop and are only recorded inside it; DataLoader workers leave
SIGINT / SIGTERM to the main process; the printed resume command."""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runtime.stop_signal as stop_signal
from runtime.stop_signal import Interrupted, StopSignal, launcher_prefix, resume_command
from tests.multiprocess import run_ranks


@pytest.mark.parametrize('signum, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_outside_the_loop_a_signal_raises_at_once(signum, status):
    before = signal.getsignal(signum)
    stop = StopSignal()
    with pytest.raises(Interrupted) as info:
        with stop.installed():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # not reached: the handler raises as soon as the signal arrives
    assert info.value.signum == signum and info.value.exit_status == status and info.value.checkpoint is None
    assert signal.getsignal(signum) is before  # the earlier handler is back


def test_inside_the_loop_a_signal_is_recorded_for_the_next_step_boundary():
    stop = StopSignal()
    with stop.installed():
        with stop.deferred():
            assert not stop.requested and not stop.agreed()
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)  # a second signal changes nothing
            time.sleep(0.05)
            assert stop.requested and stop.signum == signal.SIGTERM and not stop.stopped
            assert stop.agreed() and stop.stopped
        with pytest.raises(Interrupted):  # a recorded stop is not lost when the loop would start again
            with stop.deferred():
                pass


def _worker_body(ready) -> None:
    stop_signal.ignore_stop_signals()
    ready.set()
    while True:
        time.sleep(0.05)


def test_a_worker_outlives_group_signals_and_ends_when_its_loader_terminates_it():
    context = multiprocessing.get_context('fork')
    ready = context.Event()
    worker = context.Process(target=_worker_body, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        for name in ('INT', 'TERM'):  # from another process, as a terminal or a scheduler sends them
            subprocess.run(['kill', f'-{name}', str(worker.pid)], check=True)
        time.sleep(0.5)
        assert worker.is_alive()
        worker.terminate()  # SIGTERM from the process that started it: the loader shutting it down
        worker.join(30)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()


def test_launcher_prefix_is_the_launcher_command_up_to_the_script():
    args = ['--config', 'c.yaml', '--resume', 'a.pth']
    torchrun = ['/venv/bin/python', '/venv/bin/torchrun', '--nproc_per_node=2', 'main.py', *args]
    assert launcher_prefix(torchrun, args) == torchrun[:4]
    assert launcher_prefix(['bash', '-c', 'something else'], args) is None
    assert launcher_prefix(args, args) is None  # nothing before the arguments: not a launcher


@pytest.mark.parametrize('given', [['--resume', 'old.pth'], ['--resume=old.pth'], []])
def test_resume_command_replaces_the_resume_flag(given, monkeypatch):
    monkeypatch.delenv('RANK', raising=False)
    command = shlex.split(resume_command('w/run_1_7.pth', ['main.py', '--config', 'a b.yaml', *given, '--debug']))
    assert command[1:] == ['main.py', '--config', 'a b.yaml', '--debug', '--resume', 'w/run_1_7.pth']
    assert command[0] in ('python', sys.executable)


def agreeing_rank(rank: int, workdir: str, side_group: str) -> None:
    """One of 2 processes (run_ranks): asks whether to stop before and after only rank 1 got SIGTERM; dumps it."""
    import torch.distributed as dist
    if side_group == 'yes':  # as under NCCL: the flag goes through a gloo group of its own
        dist.get_backend = lambda group=None: 'nccl'
    stop = StopSignal()
    first = stop.agreed()  # nobody asked yet
    if rank == 1:
        stop.signum = signal.SIGTERM  # only rank 1 got the signal
    second = stop.agreed()
    Path(workdir, f'rank{rank}.json').write_text(json.dumps([rank, first, second, stop.signum, stop.stopped]))


@pytest.mark.parametrize('side_group', ['no', 'yes'], ids=['default-group', 'gloo-side-group'])
def test_every_rank_agrees_to_stop_when_one_rank_got_the_signal(side_group, tmp_path):
    job = run_ranks('tests.runtime.test_stop_signal:agreeing_rank', 2, [str(tmp_path), side_group], timeout=120)
    assert not job.timed_out and job.returncodes == [0, 0], job.outputs
    got = [json.loads(Path(tmp_path, f'rank{r}.json').read_text()) for r in range(2)]
    assert got == [[0, False, True, signal.SIGTERM, True], [1, False, True, signal.SIGTERM, True]]
