"""IterationCallback's window logging: losses summed on the device, reduced across ranks once per window."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401

import json
import math
import re
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from fastai.basic_data import DataBunch
from fastai.basic_train import Learner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.distributed import DistributedTrainer
from callbacks.iteration import IterationCallback, LossWindow
from callbacks.nonfinite import NonFiniteGuard
from runtime.distributed import DistEnv, setup_rank_logger
from tests.multiprocess import run_ranks

BATCH, STEPS, SHOW = 2, 10, 4  # windows: iterations 1-4, 5-8 and the final partial one, 9-10
NAN_BATCHES = {1: [0, 1, 2, 3, 5, 8, 9]}  # rank 1: a whole window, one step of the next, the whole last window


class TwoTermLoss(nn.Module):
    """MSE + MAE, recording both terms in `losses` as the project's loss functions do."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: dict[str, torch.Tensor] = {}

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mse, mae = ((out - y) ** 2).mean(), (out - y).abs().mean()
        self.losses = {'mse_loss': mse.detach(), 'mae_loss': mae.detach()}
        return mse + mae


def test_window_means_skip_non_finite_steps_and_fix_the_keys():
    window = LossWindow(torch.device('cpu'))
    steps = [(1.0, {'a_loss': torch.tensor(0.25), 'rate': 0.5}),
             (math.nan, {'a_loss': torch.tensor(math.nan), 'rate': 0.5}),
             (3.0, {'a_loss': torch.tensor(0.75), 'rate': 1.0, 'new': torch.tensor(9.0)})]  # 'new': not a run key
    for loss, terms in steps:
        window.add(loss, terms)
    assert window.keys == ['a_loss', 'rate'] and len(window) == 3
    means, skipped = window.reduce()
    assert skipped == 1 and means == pytest.approx({'loss': 2.0, 'a_loss': 0.5, 'rate': 0.75})
    window.clear()
    window.add(math.inf, {'a_loss': torch.tensor(math.inf)})
    means, skipped = window.reduce()
    assert skipped == 1 and math.isnan(means['loss']) and set(means) == {'loss'}


def test_a_step_reads_no_device_value():
    """Terms on the 'meta' device have no values to read: adding steps works, only the window's reduce reads."""
    window = LossWindow(torch.device('meta'))
    for step in range(5):
        window.add(float(step) if step != 2 else math.nan, {'a_loss': torch.ones((), device='meta'), 'rate': 0.5})
    assert len(window) == 5
    with pytest.raises((RuntimeError, NotImplementedError)):
        window.reduce()


def _rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    xs, ys = torch.randn(STEPS * BATCH, 3, generator=g), torch.randn(STEPS * BATCH, 1, generator=g)
    for b in NAN_BATCHES.get(rank, []):
        xs[b * BATCH] = float('nan')
    return xs, ys


def _initial_model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def window_rank(rank: int, workdir: str) -> None:
    """One rank of a 2-process run (lr 0, so every loss is the initial model's); dumps its window means."""
    env = DistEnv(rank=rank, world_size=2, local_rank=rank)
    xs, ys = _rank_data(rank)
    train = DataLoader(TensorDataset(xs, ys), batch_size=BATCH, shuffle=False)
    data = DataBunch(train, DataLoader(TensorDataset(xs[:2], ys[:2]), batch_size=2), device=torch.device('cpu'))
    learn = Learner(data, _initial_model(), opt_func=partial(torch.optim.SGD, lr=0.0), loss_func=TwoTermLoss(),
                    wd=0.0, true_wd=False, path=workdir, model_dir='.', silent=True)
    logger = setup_rank_logger(workdir, 'train', env, name='test_iteration')
    iteration = IterationCallback(learn, name='run', workdir=workdir, logger=logger, evaluate=lambda it: {'cwr': 0.0},
                                  show_iters=SHOW, eval_iters=1000, save_iters=1000, max_iters=STEPS,
                                  is_main=rank == 0, world_size=2)
    learn.fit(1, lr=0.0, callbacks=[DistributedTrainer(learn, env), NonFiniteGuard(learn, 10, logger, rank == 0),
                                    iteration])
    Path(workdir, f'rank{rank}.json').write_text(json.dumps(iteration.train_history))


def _reference_windows() -> list[dict[str, float]]:
    """Plain per-step loop: a step counts when no rank's loss was NaN; means over the counted (rank, step)s."""
    model = _initial_model()
    terms = {r: [] for r in range(2)}
    for r in range(2):
        xs, ys = _rank_data(r)
        for b in range(STEPS):
            out = model(xs[b * BATCH:(b + 1) * BATCH]).detach()
            y = ys[b * BATCH:(b + 1) * BATCH]
            mse, mae = float(((out - y) ** 2).mean()), float((out - y).abs().mean())
            terms[r].append({'loss': mse + mae, 'mse_loss': mse, 'mae_loss': mae})
    windows = []
    for start in range(0, STEPS, SHOW):
        window = range(start, min(start + SHOW, STEPS))
        steps = [s for s in window if all(math.isfinite(terms[r][s]['loss']) for r in range(2))]
        rows = [terms[r][s] for r in range(2) for s in steps]
        means = {k: sum(row[k] for row in rows) / len(rows) for k in rows[0]} if rows else {'loss': math.nan}
        windows.append({'iteration': window[-1] + 1, **means, 'skipped': len(window) - len(steps)})
    return windows


def test_window_with_only_skipped_steps_on_one_rank_does_not_hang(tmp_path):
    """Rank 1's losses are NaN for a whole window (and the final partial one): the ranks still reduce the same
    keys, nothing hangs, and the logged means are those of the steps every rank trained."""
    job = run_ranks('tests.callbacks.test_iteration:window_rank', 2, [str(tmp_path)], timeout=120)
    assert not job.timed_out, 'the window reduction hung:\n' + job.outputs[0][-2000:]
    assert job.returncodes == [0, 0], job.outputs[0][-2000:] + job.outputs[1][-2000:]
    expected = _reference_windows()
    logged = [line for line in (tmp_path / 'train.txt').read_text().splitlines() if ': loss = ' in line]
    assert len(logged) == len(expected) == 3
    for rank in range(2):
        history = json.loads((tmp_path / f'rank{rank}.json').read_text())
        assert [h['iteration'] for h in history] == [w['iteration'] for w in expected]
        for got, want in zip(history, expected):
            assert set(got) == set(want) - {'skipped'}
            for key in got:
                assert math.isclose(got[key], want[key], rel_tol=1e-6) or (math.isnan(got[key])
                                                                          and math.isnan(want[key])), key
    for line, want in zip(logged, expected):
        skipped = re.search(r'(\d+) non-finite step\(s\) skipped', line)
        assert (int(skipped.group(1)) if skipped else 0) == want['skipped'], line


CWRS = [0.2, 0.5, 0.4, 0.5, 0.7, 0.1, 0.3, 0.9, 0.6, 0.8, 0.85, 0.2]  # the fake evaluation's cwr, one per evaluation


def _single_run(tmp_path: Path, *, steps: int, eval_iters: int, save_iters: int, cwrs: list[float] | None = None,
                eval_cpu_seconds: float = 0.0) -> tuple[IterationCallback, list[int]]:
    """A one-process run of `steps` iterations with a fake evaluation that returns the next of `cwrs`; the
    iterations at which it was called are returned too."""
    g = torch.Generator().manual_seed(3)
    xs, ys = torch.randn(steps * BATCH, 3, generator=g), torch.randn(steps * BATCH, 1, generator=g)
    data = DataBunch(DataLoader(TensorDataset(xs, ys), batch_size=BATCH),
                     DataLoader(TensorDataset(xs[:2], ys[:2]), batch_size=2), device=torch.device('cpu'))
    learn = Learner(data, _initial_model(), opt_func=partial(torch.optim.SGD, lr=0.01), loss_func=TwoTermLoss(),
                    wd=0.0, true_wd=False, path=str(tmp_path), model_dir='.', silent=True)
    called: list[int] = []

    def fake_evaluate(iteration: int) -> dict[str, float]:
        called.append(iteration)
        start = time.process_time()
        while time.process_time() - start < eval_cpu_seconds:  # an evaluation's own CPU work
            pass
        return {'loss': 0.0, 'cwr': (cwrs or [0.0])[(len(called) - 1) % len(cwrs or [0.0])]}

    logger = setup_rank_logger(tmp_path, 'train', DistEnv(), name=f'test_iteration_{tmp_path.name}')
    callback = IterationCallback(learn, name='run', workdir=tmp_path, logger=logger, evaluate=fake_evaluate,
                                 show_iters=1000, eval_iters=eval_iters, save_iters=save_iters, max_iters=steps)
    learn.fit(1, lr=0.01, callbacks=[callback])
    return callback, called


def test_best_checkpoint_follows_the_highest_cwr(tmp_path):
    """best-<name>.pth is rewritten only when an evaluation beats every earlier one (ties do not count)."""
    callback, called = _single_run(tmp_path, steps=len(CWRS) * 2, eval_iters=2, save_iters=1000, cwrs=CWRS)
    assert called == [2 * (k + 1) for k in range(len(CWRS))]  # the end of training evaluates nothing new
    best, best_at = -1.0, None
    for iteration, cwr in zip(called, CWRS):  # plain running maximum
        if cwr > best:
            best, best_at = cwr, iteration
    assert callback.best_cwr == best == 0.9
    state = torch.load(tmp_path / 'best-run.pth', weights_only=True)
    assert state['iteration'] == best_at and state['best_cwr'] == best
    assert [h['cwr'] for h in callback.history] == CWRS
    # one timing row per logging window (here only the final partial one); no timing value is asserted
    assert [t['iteration'] for t in callback.timings] == [h['iteration'] for h in callback.train_history] == [24]
    assert set(callback.timings[0]) == {'iteration', 'steps', 'seconds', 'cpu_seconds', 'data_seconds',
                                        'compute_seconds', 'images_per_second'}


def test_a_window_counts_the_cpu_time_of_training_but_not_of_evaluation(tmp_path):
    """cpu_seconds (what the study reports as cores busy) leaves the evaluations' CPU work out, as seconds does."""
    start = time.process_time()
    callback, called = _single_run(tmp_path, steps=6, eval_iters=2, save_iters=1000, eval_cpu_seconds=0.2)
    spent = time.process_time() - start
    assert len(called) == 3 and spent >= 0.6
    [window] = callback.timings
    assert 0 < window['cpu_seconds'] < spent - 0.55


def test_periodic_checkpoints_keep_the_last_five(tmp_path):
    """Saving every 2 of 15 iterations (and once at the end) leaves exactly the five newest files on disk."""
    callback, _ = _single_run(tmp_path, steps=15, eval_iters=1000, save_iters=2)
    saves = [it for it in range(1, 16) if it % 2 == 0] + [15]  # every save_iters, plus the final iteration
    expected = [tmp_path / f'run_0_{it}.pth' for it in saves[-5:]]
    assert callback.saved == expected
    assert sorted(tmp_path.glob('run_0_*.pth')) == sorted(expected)
    assert [torch.load(p, weights_only=True)['iteration'] for p in expected] == saves[-5:]
