"""Ctrl-C (SIGINT) and SIGTERM: training stops at the next step boundary and saves; anywhere else they end the run.

`StopSignal.installed()` puts the handlers in place for the whole command. Outside `deferred()` a signal raises
`Interrupted` at once (nothing half-done is kept: the caller reports one line and exits 128 + signal number).
Inside `deferred()` (the training loop) a signal only records itself; the loop asks `agreed()` at every step
boundary, which in a distributed run is a collective so that every rank stops after the same step, even when the
signal reached the ranks at different moments (a terminal signals the whole process group, torchrun forwards its
own signal once more). That collective is one integer over a gloo group on the CPU, so it never waits for the
GPU's queue (an NCCL all_reduce read back on the host would, every step). Repeated signals change nothing: the
stop is already under way.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from runtime.distributed import cpu_group

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT or SIGTERM; `exit_status` is the shell's 128 + signal number. `where` says
    how far it got (' at iteration 12'), `checkpoint` the file that holds that point (None: nothing saved)."""

    def __init__(self, signum: int, where: str = '', checkpoint: str | os.PathLike | None = None):
        super().__init__(where)
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_status(self) -> int:
        """130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """'SIGINT', 'SIGTERM', ... for a signal number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


class StopSignal:
    """The stop request of this process: which signal came (`signum`) and whether the ranks agreed to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped = False  # set by agreed(): every rank has seen the request
        self._deferring = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal reached this process."""
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            return  # a repeated signal: the stop is already under way (and may be saving a checkpoint)
        self.signum = signum
        if not self._deferring:
            raise Interrupted(self.signum)

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        """Handle SIGINT and SIGTERM while the block runs; the previous handlers afterwards. Python runs signal
        handlers in the main thread only: elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block a signal is only recorded, for the training loop to act on at a step boundary."""
        if self.signum is not None:
            raise Interrupted(self.signum)
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def agreed(self) -> bool:
        """Whether any rank has a stop request (a collective in a distributed run: call it on every rank)."""
        code = self.signum or 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            value = torch.tensor([code], dtype=torch.int32)
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=cpu_group())
            code = int(value.item())
        if code:
            self.signum = self.signum or code
            self.stopped = True
        return self.stopped


def ignore_stop_signals() -> None:
    """In a DataLoader worker: leave SIGINT and SIGTERM to the main process, which stops the workers itself.

    A terminal's Ctrl-C reaches every process of the foreground group and a scheduler's SIGTERM (SLURM) every
    process of the job; a worker that died of it would fail the batch the main process still waits for. SIGINT is
    ignored; SIGTERM is blocked and taken by a thread that ends the worker only when the process that started it
    sent it (the loader terminating a worker, as torch's own worker handler does); if that process dies, torch's
    worker watchdog ends the worker.
    """
    starter = multiprocessing.parent_process()  # the loader's process, also under the forkserver start method
    senders = {os.getppid()} | ({starter.pid} if starter is not None else set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask
    threading.Thread(target=_exit_on_sigterm_from, args=(senders,), name='sigterm', daemon=True).start()


def _exit_on_sigterm_from(senders: set[int]) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid in senders:
            os._exit(0)


def _without_resume(args: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == '--resume':
            skip = True
        elif not arg.startswith('--resume='):
            out.append(arg)
    return out


def launcher_prefix(launcher_argv: Sequence[str], args: Sequence[str]) -> list[str] | None:
    """The launcher's command line up to the script (`torchrun --nproc_per_node=2 main.py`) when it ends with the
    script's `args`, as torchrun passes them on; None otherwise."""
    n = len(args)
    if n and len(launcher_argv) > n and list(launcher_argv[-n:]) == list(args):
        return list(launcher_argv[:-n])
    return None


def _parent_argv() -> list[str]:
    try:
        raw = Path(f'/proc/{os.getppid()}/cmdline').read_bytes()  # Linux; elsewhere no launcher is recognised
    except OSError:
        return []
    return [part.decode(errors='replace') for part in raw.split(b'\0') if part]


def resume_command(checkpoint: str | os.PathLike, argv: Sequence[str] | None = None) -> str:
    """The shell command that continues this run from `checkpoint`: this command line with `--resume` replaced,
    run through the same launcher (torchrun) when one started this process."""
    argv = list(sys.argv if argv is None else argv)
    script, args = argv[0], argv[1:]
    launched = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    prefix = launcher_prefix(_parent_argv(), args) if launched else None
    if prefix is None:
        python = shutil.which('python')
        same = python is not None and os.path.realpath(python) == os.path.realpath(sys.executable)
        prefix = ['python' if same else sys.executable, script]
    return shlex.join([*prefix, *_without_resume(args), '--resume', str(checkpoint)])
