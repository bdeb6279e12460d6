"""Distributed data parallel on the CPU (gloo) through torchrun, and its samplers."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main
from configuration import REPO_ROOT, Config, ConfigError
from dataset import dataset_kwargs, named_test_sets
from evaluation.loop import evaluate
from runtime.checkpoint import load_checkpoint
from runtime.distributed import (
    DistEnv,
    ResumableDistributedSampler,
    ShardedBatchSampler,
    cleanup_distributed,
    interleave,
    local_batch_size,
    setup_distributed,
    setup_rank_logger,
)
from tests.helpers import render_lmdb, tiny_config, write_config
from tests.multiprocess import run_killable, run_ranks
from training import loaders
from training.builders import build_learner, build_model
from training.train import DUMP_FINAL_STATE_ENV, FAIL_AT_ENV
from utils import CharsetMapper


def test_sharded_batches_cover_every_index_once_and_interleave_back():
    length, batch, world = 23, 4, 3
    plain = [list(range(s, min(s + batch, length))) for s in range(0, length, batch)]  # single-process batches
    shards = [list(ShardedBatchSampler(length, batch, rank, world)) for rank in range(world)]
    assert [len(s) for s in shards] == [len(ShardedBatchSampler(length, batch, r, world)) for r in range(world)]
    assert sorted(i for s in shards for b in s for i in b) == list(range(length))  # no padding, no duplicate
    assert interleave(shards) == plain
    assert list(ShardedBatchSampler(3, 4, 1, 2)) == []  # fewer batches than processes: rank 1 has none


def test_training_sampler_shards_are_disjoint_and_resume_skips_exactly():
    data = list(range(50))
    samplers = [ResumableDistributedSampler(data, 2, rank, seed=7, batch_size=4) for rank in range(2)]
    for s in samplers:
        s.set_epoch(3)
    shards = [list(s) for s in samplers]
    assert len(shards[0]) == len(shards[1]) == 25 and not set(shards[0]) & set(shards[1])
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(7 + 3)).tolist()  # torch's recipe
    assert shards[0] == perm[0::2] and shards[1] == perm[1::2]
    samplers[0].set_epoch(4)
    assert list(samplers[0]) != shards[0]
    samplers[0].resume_at(3, 2)
    assert len(list(samplers[0])) == 25  # epoch 4: the skip belongs to epoch 3 only
    samplers[0].set_epoch(3)
    assert list(samplers[0]) == shards[0][8:] and len(samplers[0]) == 17


def test_global_batch_must_split_evenly():
    assert local_batch_size(384, 4) == 96
    with pytest.raises(ConfigError, match='not divisible'):
        local_batch_size(10, 4)


def test_single_process_seeing_several_gpus_says_how_to_use_them(monkeypatch, capsys):
    """Reached by main.py only with `training.processes: 1`; otherwise it starts one process per GPU."""
    for name in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: None)
    env = setup_distributed()
    assert env.device == torch.device('cuda', 0) and env.world_size == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'training.processes: null (or 4)' in err[0]


@pytest.mark.parametrize('world_size', [None, '1'])
def test_single_process_with_a_local_rank_makes_its_gpu_current(monkeypatch, world_size):
    """A single-process run given LOCAL_RANK 1 (by a launcher, or torchrun with one process) uses cuda:1 and
    makes it the current device, so nothing lands on cuda:0; a LOCAL_RANK beyond the GPUs is a one-line error."""
    current = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', current.append)
    for name in ('WORLD_SIZE', 'RANK'):
        monkeypatch.delenv(name, raising=False)
    if world_size is not None:
        monkeypatch.setenv('WORLD_SIZE', world_size)
        monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('LOCAL_RANK', '1')
    env = setup_distributed()
    assert env.device == torch.device('cuda', 1) and current == [torch.device('cuda', 1)]
    monkeypatch.setenv('LOCAL_RANK', '2')
    with pytest.raises(ConfigError, match='LOCAL_RANK 2 but only 2 GPU'):
        setup_distributed()


def test_process_group_timeout_comes_from_the_config(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: False)
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(torch.distributed, 'get_rank', lambda: 1)
    monkeypatch.setattr(torch.distributed, 'get_world_size', lambda: 2)
    for name, value in (('WORLD_SIZE', '2'), ('RANK', '1'), ('LOCAL_RANK', '1')):
        monkeypatch.setenv(name, value)
    config = Config(write_config(tmp_path / 'c.yaml', **{'global': {'dist_timeout': 90}}))
    env = setup_distributed(timeout_s=config.global_dist_timeout)
    assert env.rank == 1 and seen['backend'] == 'gloo' and seen['timeout'].total_seconds() == 90
    for bad in (0, -5):
        with pytest.raises(ConfigError, match=f'global.dist_timeout {bad}'):
            setup_distributed(timeout_s=bad)


def test_other_ranks_log_warnings_only(tmp_path, capsys):
    logger = setup_rank_logger(tmp_path, 'train', DistEnv(rank=1, world_size=2))
    try:
        logger.info('not shown')
        logger.warning('shown')
    finally:
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert 'shown' in err and 'rank 1' in err and 'not shown' not in err
    assert not (tmp_path / 'train.txt').exists()


def leaving_rank(rank: int, workdir: str) -> None:
    """One of 2 processes: rank 0 reaches the end 2 s late; both write when they entered and left the cleanup."""
    if rank == 0:
        time.sleep(2.0)
    entered = time.time()
    cleanup_distributed()
    Path(workdir, f'rank{rank}.txt').write_text(f'{entered} {time.time()}')


def test_a_finished_rank_leaves_the_group_only_when_every_rank_has_finished(tmp_path):
    """A rank that destroys its group while a peer is still at work can abort in gloo's teardown (seen as one rank
    of a finished job exiting with SIGABRT), so the ranks meet before leaving: the early rank leaves after the
    late rank arrived."""
    job = run_ranks('tests.runtime.test_distributed:leaving_rank', 2, [str(tmp_path)], timeout=120)
    assert job.returncodes == [0, 0], job.outputs
    late_entered, _ = map(float, (tmp_path / 'rank0.txt').read_text().split())
    _, early_left = map(float, (tmp_path / 'rank1.txt').read_text().split())
    assert early_left >= late_entered


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('lmdb')
    return (render_lmdb(root / 'train', 48, seed=1), render_lmdb(root / 'test', 24, seed=2),
            render_lmdb(root / 'small', 3, seed=3))


def _torchrun(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', **env_extra)
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               str(REPO_ROOT / 'main.py'), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _messages(log: Path) -> list[str]:
    return [line.split('] ', 1)[1] for line in log.read_text().splitlines() if line.startswith('[')]


def _train_two_processes(folder: Path, lmdbs, conclr: bool) -> tuple[Path, subprocess.CompletedProcess]:
    """12 iterations of 2 processes: 48 samples / global batch 8 = 6 per epoch, so an epoch boundary is crossed.
    Test batches of 5 give 5 + 1 batches; the small set's single batch leaves rank 1 without one."""
    train_root, test_root, small_root = lmdbs
    path = tiny_config(folder, train_root, [test_root, small_root], conclr=conclr, max_iters=12, show_iters=4,
                       eval_iters=6, save_iters=6)
    path.write_text(path.read_text().replace('batch_size: 16', 'batch_size: 5'))
    result = _torchrun(['--config', str(path)], {DUMP_FINAL_STATE_ENV: str(folder / 'dump')})
    return path, result


@pytest.fixture(scope='module')
def vision_run(tmp_path_factory, lmdbs):
    return _train_two_processes(tmp_path_factory.mktemp('vision'), lmdbs, conclr=False)


@pytest.mark.parametrize('conclr', [False, True], ids=['vision', 'conclr'])
def test_two_processes_train_identical_weights_and_evaluate_exactly(tmp_path, lmdbs, vision_run, conclr):
    path, result = _train_two_processes(tmp_path, lmdbs, conclr=True) if conclr else vision_run
    config = Config(path)
    ranks = [torch.load(path.parent / 'dump' / f'rank{r}.pth', weights_only=True) for r in range(2)]
    final = load_checkpoint(config.workdir / 'run_1_12.pth')
    assert final['iteration'] == 12 and final['world_size'] == 2 and len(final['rng']) == 2
    assert not any(k.startswith('module.') for k in final['model'])
    for key, value in final['model'].items():
        assert torch.equal(ranks[0]['model'][key], value) and torch.equal(ranks[1]['model'][key], value), key

    messages = _messages(config.workdir / 'train.txt')
    assert len(messages) == len(set(messages)), 'duplicated log lines'
    train_lines = [m for m in messages if ': loss = ' in m]
    assert [m.split(':')[0] for m in train_lines] == ['epoch 0 iter 4', 'epoch 1 iter 8', 'epoch 1 iter 12']
    assert all(' s / compute ' in m for m in train_lines)
    assert sum('eval loss' in m for m in messages) == 2
    assert 'INFO' not in result.stderr  # rank 1 logs warnings only

    # The gathered 2-process evaluation at the end of training equals a 1-process evaluation of the checkpoint.
    last = ranks[0]['history'][-1]
    assert ranks[1]['history'] == ranks[0]['history'] and last['iteration'] == 12
    config.model_checkpoint = str(config.workdir / 'run_1_12.pth')
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    sets = named_test_sets(config.dataset_test_roots, charset, **dataset_kwargs(config, False))
    valid = torch.utils.data.ConcatDataset(list(sets.values()))
    dl = loaders.test_loader(config, valid, torch.device('cpu'))
    learn = build_learner(config, build_model(config), dl.dl, dl.dl, torch.device('cpu'))
    single = evaluate(learn, dl, charset)
    assert last['loss'] == single.loss
    assert {k: v for k, v in last.items() if k not in ('iteration', 'loss')} == \
        {k: v for k, v in single.metrics.summary().items() if k != 'words'}


def test_two_process_test_phase_equals_one_process(vision_run):
    path, _ = vision_run
    config = Config(path)
    checkpoint = str(config.workdir / 'run_1_12.pth')
    assert main.main(['--config', str(path), '--phase', 'test', '--checkpoint', checkpoint, '--image_only']) == 0
    single = config.workdir / 'single'
    single.mkdir()
    for name in ('test_results.csv', 'predictions'):
        (config.workdir / name).rename(single / name)
    _torchrun(['--config', str(path), '--phase', 'test', '--checkpoint', checkpoint, '--image_only'], {})
    assert (config.workdir / 'test_results.csv').read_bytes() == (single / 'test_results.csv').read_bytes()
    for name in ('test.tsv', 'small.tsv'):
        assert (config.workdir / 'predictions' / name).read_bytes() == (single / 'predictions' / name).read_bytes()
    rows = list(csv.DictReader(open(config.workdir / 'test_results.csv')))
    assert [(r['dataset'], r['samples']) for r in rows] == [('test', '24'), ('small', '3'), ('all', '27'),
                                                              ('average', '27')]
    messages = _messages(config.workdir / 'test.txt')
    assert sum(m.startswith('results') for m in messages) == 2  # one per run, not one per process


def _plain_python(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """`python main.py ...` as a user types it (no torchrun variables in its environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env.update(OMP_NUM_THREADS='1', **env_extra)
    return subprocess.run([sys.executable, str(REPO_ROOT / 'main.py'), *args], env=env, capture_output=True,
                          text=True, timeout=240, cwd=REPO_ROOT)


def test_plain_python_with_two_processes_equals_torchrun(tmp_path, vision_run):
    """`training.processes: 2` from a plain `python main.py`: the same final weights, evaluation history and test
    table as the torchrun run of the same config (vision_run)."""
    torchrun_path, _ = vision_run
    torchrun_config = Config(torchrun_path)
    text = torchrun_path.read_text().replace(str(torchrun_config.global_workdir), str(tmp_path / 'workdir'))
    path = tmp_path / 'plain.yaml'
    path.write_text(text.replace('training:\n', 'training:\n  processes: 2\n'))
    config = Config(path)
    assert config.training_processes == 2 and config.workdir != torchrun_config.workdir

    result = _plain_python(['--config', str(path)], {DUMP_FINAL_STATE_ENV: str(tmp_path / 'dump')})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ours = [torch.load(tmp_path / 'dump' / f'rank{r}.pth', weights_only=True) for r in range(2)]
    theirs = torch.load(torchrun_path.parent / 'dump' / 'rank0.pth', weights_only=True)
    assert ours[0]['model'].keys() == theirs['model'].keys()
    for key, value in theirs['model'].items():
        assert torch.equal(ours[0]['model'][key], value) and torch.equal(ours[1]['model'][key], value), key
    assert ours[0]['history'] == theirs['history'] and ours[0]['history'][-1]['iteration'] == 12
    messages = _messages(config.workdir / 'train.txt')
    assert "2 processes started by main.py through torch's elastic launcher (training.processes 2)" in messages
    assert '2 processes (gloo): global batch 8 = 2 x 4' in messages
    assert 'INFO' not in result.stderr and 'elastic' not in result.stderr  # no launcher chatter

    # test phase: the plain run evaluates its own best checkpoint; torchrun gets the torchrun run's best
    # explicitly, from a config whose training.processes (3) disagrees with its 2 processes
    plain = _plain_python(['--config', str(path), '--phase', 'test', '--image_only'], {})
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    disagreeing = tmp_path / 'torchrun.yaml'
    disagreeing.write_text(torchrun_path.read_text().replace('training:\n', 'training:\n  processes: 3\n'))
    _torchrun(['--config', str(disagreeing), '--phase', 'test', '--image_only', '--name', 'torchrun_test',
               '--checkpoint', str(torchrun_config.workdir / 'best-run.pth')], {})
    other = torchrun_config.workdir.parent / 'torchrun_test'
    assert (config.workdir / 'test_results.csv').read_bytes() == (other / 'test_results.csv').read_bytes()
    for name in ('test.tsv', 'small.tsv'):
        assert (config.workdir / 'predictions' / name).read_bytes() == (other / 'predictions' / name).read_bytes()
    assert f"no --checkpoint given: loading the run's best checkpoint {config.workdir / 'best-run.pth'}" in \
        _messages(config.workdir / 'test.txt')
    assert 'training.processes 3 is ignored under torchrun: it started 2 process(es) (WORLD_SIZE)' in \
        _messages(other / 'test.txt')


def test_failing_workers_reach_the_plain_python_as_one_line(tmp_path, lmdbs):
    _, test_root, _ = lmdbs
    path = tiny_config(tmp_path, tmp_path / 'no_such_lmdb', [test_root], processes=2)
    result = _plain_python(['--config', str(path)], {})
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and 'no_such_lmdb' in err[0], result.stderr


def test_a_failing_rank_ends_the_job_with_its_one_line_error(tmp_path, lmdbs):
    """Rank 1 fails mid-epoch while rank 0 waits in DDP's gradient all-reduce. Rank 1 must leave without entering
    another collective (fastai still calls on_train_end on it), so the job ends instead of waiting for the
    process-group timeout, and its one-line error is shown. The kill timeout only bounds a hang; no speed is
    asserted."""
    train_root, test_root, _ = lmdbs
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=40, show_iters=10, eval_iters=100,
                       save_iters=100)
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               str(REPO_ROOT / 'main.py'), '--config', str(path)]
    job = run_killable(command, {FAIL_AT_ENV: '1:3'}, timeout=120)
    output = job.outputs[0]
    assert not job.timed_out, 'the job hung after rank 1 failed:\n' + output[-3000:]
    assert job.returncodes[0] != 0
    errors = [line for line in output.splitlines() if line.startswith('error')]
    assert errors == [f'error (rank 1): {FAIL_AT_ENV}: simulated loader failure at iteration 3'], output[-3000:]
