"""tools/continue_config.py: a run continues from a weights-only milestone at the milestone's iteration, with a
fresh optimiser whose lr warms up from there, and the same weights to start from."""

import re

import pytest
import torch

import main
from callbacks.lr_schedule import lr_at
from configuration import Config, load_yaml
from runtime.checkpoint import load_checkpoint
from tests.helpers import render_lmdb, tiny_config
from tools import continue_config, release_checkpoint


def test_warm_up_counts_from_the_start_iteration():
    # a plain reference: lr * (k + 1) / warmup for the k-th iteration after the start, lr after that
    for start in (0, 300):
        got = [lr_at(start + k, 1000, 0.01, [10], 0.1, warmup_iters=4, warmup_from=start) for k in range(6)]
        assert got == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    assert lr_at(300, 1000, 0.01, [10], 0.1, warmup_iters=4) == 0.01  # counted from 0, long over


def test_config_points_at_the_milestone_and_keeps_everything_else():
    config = {'global': {'name': 'x'}, 'optimizer': {'lr': 0.002, 'scheduler': {'periods': [2, 1]}}}
    out = continue_config.continue_config(config, 'm.pth', 1500, 200)
    assert out['model']['checkpoint'] == 'm.pth' and out['training']['start_iters'] == 1500
    assert out['optimizer'] == {'lr': 0.002, 'scheduler': {'periods': [2, 1], 'warmup_iters': 200}}
    assert 'model' not in config and 'warmup_iters' not in config['optimizer']['scheduler']  # input untouched


def test_a_run_continues_from_its_released_milestone(tmp_path, capsys):
    train_root = render_lmdb(tmp_path / 'train', 48, seed=1)
    test_root = render_lmdb(tmp_path / 'test', 8, seed=2)
    first = tiny_config(tmp_path, train_root, [test_root], max_iters=10, eval_iters=10, save_iters=10)
    main.train(Config(first), torch.device('cpu'))
    periodic = next((tmp_path / 'workdir' / 'run').glob('run_*_10.pth'))
    milestone = tmp_path / 'milestone.pth'
    assert release_checkpoint.main(['--checkpoint', str(periodic), '--output', str(milestone)]) == 0

    continued = tmp_path / 'continue.yaml'
    assert continue_config.main(['--config', str(first), '--milestone', str(milestone), '--output', str(continued),
                                 '--warmup_iters', '4']) == 0
    assert load_yaml(continued)['training']['start_iters'] == 10
    config = Config(continued)
    config.global_name, config.training_max_iters = 'continued', 16
    config.training_show_iters = 1
    callback = main.train(config, torch.device('cpu'))
    assert callback.iteration == 16
    log = (tmp_path / 'workdir' / 'continued' / 'train.txt').read_text()
    assert f'starting from the weights of model.checkpoint {milestone} (fresh optimiser)' in log
    # six iterations, 11 to 16; the first four warm up: lr 0.003 x 1/4, 2/4, 3/4, 4/4
    lrs = [float(x) for x in re.findall(r'iter \d+: loss .*?lr = ([0-9.e+-]+)', log)]
    assert lrs == pytest.approx([0.00075, 0.0015, 0.00225, 0.003, 0.003, 0.003])
    saved = load_checkpoint(tmp_path / 'workdir' / 'continued' / 'continued_0_16.pth')
    assert saved['iteration'] == 16


def test_a_milestone_without_an_iteration_is_one_line(tmp_path, capsys):
    bare = tmp_path / 'bare.pth'
    torch.save({'model': {}, 'opt': None}, bare)
    (tmp_path / 'c.yaml').write_text('global: {name: x}\n')
    assert continue_config.main(['--config', str(tmp_path / 'c.yaml'), '--milestone', str(bare), '--output',
                                 str(tmp_path / 'out.yaml')]) == 2
    assert 'holds no iteration' in capsys.readouterr().err and not (tmp_path / 'out.yaml').exists()
