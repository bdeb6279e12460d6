"""runtime/launcher.py: how many processes a plain `python main.py` starts, and how a failed worker is reported."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch

import main
import runtime.launcher as launcher
from configuration import Config, ConfigError
from runtime.launcher import ERROR_DIR_ENV, process_count, report_error
from tests.helpers import tiny_config

TORCHRUN_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def test_process_count_defaults_to_every_gpu_and_one_on_the_cpu():
    assert [process_count(None, gpus) for gpus in (0, 1, 4)] == [1, 1, 4]
    assert process_count(2, 0) == 2 and process_count(3, 4) == 3 and process_count(1, 8) == 1
    for bad in (0, -1, 1.5, True, '2'):
        with pytest.raises(ConfigError, match='training.processes'):
            process_count(bad, 0)
    with pytest.raises(ConfigError, match='only 2 GPU'):
        process_count(3, 2)


def test_worker_errors_go_to_the_launcher_folder(tmp_path, monkeypatch, capsys):
    report_error('bad thing', 1)
    assert capsys.readouterr().err == 'error (rank 1): bad thing\n'
    monkeypatch.setenv(ERROR_DIR_ENV, str(tmp_path))
    report_error('bad thing', 1)
    assert capsys.readouterr().err == '' and (tmp_path / 'rank1.txt').read_text() == 'bad thing'


def _failures(**codes: int) -> dict:
    return {int(rank.removeprefix('r')): SimpleNamespace(exitcode=code) for rank, code in codes.items()}


def test_one_line_for_a_failed_run(tmp_path):
    # the lowest rank that wrote an error, with its exit status
    (tmp_path / 'rank1.txt').write_text('LMDB not found: x\n')
    (tmp_path / 'rank3.txt').write_text('other')
    assert launcher._failure_line(_failures(r1=2, r3=2), tmp_path) == ('error (rank 1): LMDB not found: x', 2)
    (tmp_path / 'rank0.txt').write_text('config: bad key')
    assert launcher._failure_line(_failures(r0=2, r1=2), tmp_path) == ('error: config: bad key', 2)
    # nothing written: the exit status or the signal of the lowest failed rank
    empty = tmp_path / 'empty'
    empty.mkdir()
    line, status = launcher._failure_line(_failures(r2=1, r1=-int(signal.SIGKILL)), empty)
    assert line == 'error: worker process rank 1 was killed by SIGKILL' and status == 128 + int(signal.SIGKILL)
    line, status = launcher._failure_line(_failures(r2=3), empty)
    assert 'rank 2 exited with status 3' in line and status == 3


@pytest.fixture
def plain(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plain_main_seeing_four_gpus_starts_four_workers(tmp_path, plain):
    plain.setattr(torch.cuda, 'is_available', lambda: True)
    plain.setattr(torch.cuda, 'device_count', lambda: 4)
    calls = []
    plain.setattr(main, 'launch', lambda n, script, argv, why: calls.append((n, script, argv, why)) or 0)
    path = tiny_config(tmp_path, tmp_path / 'train', [tmp_path / 'test'])
    assert main.main(['--config', str(path), '--debug']) == 0
    assert calls == [(4, main.MAIN_SCRIPT, ['--config', str(path), '--debug'], 'one per visible GPU: 4')]


def test_processes_key_sets_the_count_and_torchrun_ignores_it(tmp_path, plain):
    path = tiny_config(tmp_path, tmp_path / 'train', [tmp_path / 'test'], processes=2)
    assert main.processes_to_start(Config(path)) == (2, 'training.processes 2')
    plain.setenv('RANK', '0')
    plain.setenv('WORLD_SIZE', '3')
    assert main.processes_to_start(Config(path)) == (1, '')


def test_test_phase_without_best_checkpoint_fails_before_any_worker_starts(tmp_path, plain, capsys):
    plain.setattr(main, 'launch', lambda *args: pytest.fail('workers started'))
    path = tiny_config(tmp_path, tmp_path / 'train', [tmp_path / 'test'], processes=2)
    assert main.main(['--config', str(path), '--phase', 'test']) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(tmp_path / 'workdir' / 'run' / 'best-run.pth') in err[0]
