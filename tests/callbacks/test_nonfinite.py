"""Non-finite losses: their steps are skipped with a warning; too many in a row stop training."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401

import logging
from functools import partial

import pytest
import torch
from fastai.basic_data import DataBunch
from fastai.basic_train import Learner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError


def _setup(tmp_path, nan_batches: list[int], batches: int = 6) -> tuple[Learner, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(batches * 2, 3, generator=generator), torch.randn(batches * 2, 1, generator=generator)
    for b in nan_batches:
        xs[2 * b] = float('nan')
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    train = DataLoader(TensorDataset(xs, ys), batch_size=2, shuffle=False)
    data = DataBunch(train, DataLoader(TensorDataset(xs[:2], ys[:2]), batch_size=2), device=torch.device('cpu'))
    learn = Learner(data, model, opt_func=partial(torch.optim.SGD, lr=0.1), loss_func=nn.MSELoss(), wd=0.0,
                    true_wd=False, path=str(tmp_path), model_dir='.', silent=True)
    return learn, xs, ys


def test_non_finite_steps_are_skipped(tmp_path, caplog):
    learn, xs, ys = _setup(tmp_path, nan_batches=[1, 2])
    logger = logging.getLogger('test_nonfinite')
    with caplog.at_level(logging.WARNING, logger='test_nonfinite'):
        learn.fit(1, lr=0.1, callbacks=[NonFiniteGuard(learn, max_in_row=3, logger=logger)])
    torch.manual_seed(0)
    reference = nn.Linear(3, 1)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for b in (0, 3, 4, 5):  # only the finite batches, in order
        nn.functional.mse_loss(reference(xs[2 * b:2 * b + 2]), ys[2 * b:2 * b + 2]).backward()
        opt.step()
        opt.zero_grad()
    for p, q in zip(learn.model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all('non-finite training loss' in m and 'step skipped' in m for m in messages)
    assert 'at iteration 2:' in messages[0] and '(1 in a row' in messages[0]
    assert 'at iteration 3:' in messages[1] and '(2 in a row' in messages[1]


def test_too_many_in_a_row_stop_training(tmp_path):
    learn, _, _ = _setup(tmp_path, nan_batches=[1, 2, 3])
    guard = NonFiniteGuard(learn, max_in_row=3, logger=logging.getLogger('test_nonfinite'))
    with pytest.raises(NonFiniteLossError, match='3 non-finite training losses in a row'):
        learn.fit(1, lr=0.1, callbacks=[guard])
    assert guard.skipped == 3
