"""A plain `python main.py` that is to run several processes starts them itself, through torch's elastic launcher.

This is the launcher torchrun runs (`torch.distributed.launcher.api.elastic_launch`, here with torchrun
--standalone's local c10d rendezvous), so every worker is `python -u main.py <the same arguments>` with RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, and takes exactly the torchrun code path of main.py.
A failing worker's one-line error reaches the launching process's stderr as one line, with its exit status.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from configuration import ConfigError

# Set in the workers this module starts: why they were started (main.py logs it).
LAUNCHED_BY_ENV = 'CONCLR_LAUNCHED_BY_MAIN'
# Set in the workers this module starts: the folder where each writes its one-line error (rank<r>.txt).
ERROR_DIR_ENV = 'CONCLR_WORKER_ERRORS'
# Loggers of torch's launcher; their messages are kept back unless the launch itself breaks.
_LAUNCHER_LOGGERS = ('torch.distributed.elastic', 'torch.distributed.launcher')


def process_count(requested: int | None, gpus: int, share_gpus: bool = False) -> int:
    """Processes a plain run starts: `requested` (training.processes), else one per visible GPU, 1 without one;
    more than the GPUs only when they may be shared (`global.dist_backend: gloo`)."""
    if requested is None:
        return max(gpus, 1)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ConfigError(f'training.processes must be a positive integer or null, got {requested!r}')
    if gpus and requested > gpus and not share_gpus:
        raise ConfigError(f'training.processes {requested}: only {gpus} GPU(s) are visible (one process per GPU; '
                          'global.dist_backend gloo lets processes share them)')
    return requested


def report_error(message: str, rank: int) -> None:
    """A worker's one-line error: to the launching process when one started it, else on stderr."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder:
        try:
            (Path(folder) / f'rank{rank}.txt').write_text(message, encoding='utf-8')
            return
        except OSError:
            pass
    print(f'error: {message}' if rank == 0 else f'error (rank {rank}): {message}', file=sys.stderr)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """os.environ with `values` set (inherited by the workers), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _KeepRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _launcher_logs_kept() -> Iterator[_KeepRecords]:
    """Keep torch's launcher log lines (worker exit codes, shutdown notices) from stderr; they are collected."""
    keep = _KeepRecords()
    loggers = [logging.getLogger(name) for name in _LAUNCHER_LOGGERS]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(keep)
        logger.propagate = False
    try:
        yield keep
    finally:
        for logger, propagate in zip(loggers, saved):
            logger.removeHandler(keep)
            logger.propagate = propagate


def _failure_line(failures: dict, errors: Path) -> tuple[str, int]:
    """The one line and the exit status of a failed run: the lowest rank that wrote an error, else the lowest
    failed rank's exit code or signal."""
    written = sorted((int(p.stem.removeprefix('rank')), p.read_text(encoding='utf-8').strip())
                     for p in errors.glob('rank*.txt'))
    if written:
        rank, message = written[0]
        failure = failures.get(rank)
        status = failure.exitcode if failure is not None and failure.exitcode > 0 else 2
        return (f'error: {message}' if rank == 0 else f'error (rank {rank}): {message}'), status
    rank = min(failures)
    code = failures[rank].exitcode
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f'error: worker process rank {rank} was killed by {name}', 128 - code
    return f'error: worker process rank {rank} exited with status {code} (see its output above)', code or 1


def launch(processes: int, script: str | os.PathLike, argv: list[str], reason: str) -> int:
    """Run `python -u script *argv` as `processes` workers on this machine, as `torchrun --standalone
    --nproc_per_node=<processes>` would; returns the run's exit status. `reason` is logged by the workers."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                          rdzv_backend='c10d', rdzv_endpoint='localhost:0', max_restarts=0)
    # torchrun's default for several workers, unless set: one OpenMP thread each
    threads = {} if 'OMP_NUM_THREADS' in os.environ else {'OMP_NUM_THREADS': '1'}
    with tempfile.TemporaryDirectory(prefix='conclr-workers-') as errors, \
            _environment(**{LAUNCHED_BY_ENV: reason, ERROR_DIR_ENV: errors}, **threads), \
            _launcher_logs_kept() as kept:
        try:
            elastic_launch(config, sys.executable)('-u', str(script), *argv)
        except ChildFailedError as e:
            line, status = _failure_line(e.failures, Path(errors))
            print(line, file=sys.stderr)
            return status
        except SignalException as e:
            print(f'error: stopped by {e.sigval.name}; the worker processes were stopped too', file=sys.stderr)
            return 128 + int(e.sigval)
        except BaseException:
            for record in kept.records:
                print(record.getMessage(), file=sys.stderr)
            raise
    return 0
