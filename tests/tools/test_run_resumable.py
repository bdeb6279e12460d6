"""tools/run_resumable.sh: a milestone released with --finished marks its run done, so a fresh clone does not train a
finished run on again; an unfinished milestone is continued (tests/tools/test_continue_config.py covers the config)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from tools import continue_config, release_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / 'tools' / 'run_resumable.sh'


def milestone(path: Path, *flags: str) -> Path:
    """A weights-only release at iteration 40, with `flags` passed to tools.release_checkpoint."""
    torch.save({'model': {'w': torch.zeros(2)}, 'opt': None, 'iteration': 40}, path.with_suffix('.train'))
    assert release_checkpoint.main(['--checkpoint', str(path.with_suffix('.train')), '--output', str(path),
                                    *flags]) == 0
    return path


def run_resumable(config: Path, workdir: Path, milestone_path: Path) -> subprocess.CompletedProcess:
    """tools/run_resumable.sh run as a user would, with this interpreter as PYTHON."""
    return subprocess.run(['bash', str(SCRIPT), str(config), str(workdir), str(milestone_path)], text=True,
                          capture_output=True, env={**os.environ, 'PYTHON': sys.executable}, timeout=120)


def test_a_finished_milestone_is_a_done_run_and_trains_nothing(tmp_path):
    finished = milestone(tmp_path / 'finished.pth', '--finished')
    assert torch.load(finished, weights_only=True)['finished'] is True
    config = tmp_path / 'c.yaml'
    config.write_text('global: {name: run}\n')
    workdir = tmp_path / 'workdir' / 'run'

    result = run_resumable(config, workdir, finished)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == 'run: done already (its milestone)'
    assert (workdir / 'done').exists()
    assert not (tmp_path / 'workdir' / 'run.stdout').exists()  # main.py never started
    assert not (tmp_path / 'workdir' / 'run.continue.yaml').exists()
    assert run_resumable(config, workdir, finished).stdout == 'run: done already\n'  # the second call: the marker


def test_finished_survives_a_second_release_and_an_unfinished_milestone_is_continued(tmp_path):
    again = tmp_path / 'again.pth'
    assert release_checkpoint.main(['--checkpoint', str(milestone(tmp_path / 'f.pth', '--finished')),
                                    '--output', str(again)]) == 0
    assert torch.load(again, weights_only=True)['finished'] is True
    (tmp_path / 'c.yaml').write_text('global: {name: x}\n')
    args = ['--config', str(tmp_path / 'c.yaml'), '--output', str(tmp_path / 'out.yaml')]
    assert continue_config.main([*args, '--milestone', str(again)]) == continue_config.FINISHED
    assert not (tmp_path / 'out.yaml').exists()
    unfinished = milestone(tmp_path / 'u.pth')
    assert 'finished' not in torch.load(unfinished, weights_only=True)
    assert continue_config.main([*args, '--milestone', str(unfinished)]) == 0
    assert (tmp_path / 'out.yaml').exists()
