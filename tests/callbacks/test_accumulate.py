"""Gradient accumulation (training.accumulate): k micro-batches make the update of one batch of k times the size
(ABINet-Vision) or of a plain reference loop (ConCLR-Vision); steps, lr schedule, logging and resuming count
optimiser steps."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401

import copy
import re
from pathlib import Path

import pytest
import torch
from fastai.callback import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import main
from callbacks.accumulate import GradientAccumulation, GradientClipping, check_accumulate, step_ends
from callbacks.conaug import ConAugPretransform
from callbacks.distributed import DistributedTrainer
from configuration import Config, ConfigError
from runtime.checkpoint import load_checkpoint
from runtime.distributed import DistEnv, ResumableDistributedSampler, local_batch_size
from tests.helpers import TINY_VISION, randomise, render_lmdb, tiny_config, write_config
from tests.multiprocess import run_ranks
from training.builders import build_learner, build_loss, build_model, optimizer_func
from utils import CharsetMapper

CPU = torch.device('cpu')
ABINET, CONCLR = 'modules.model_vision.BaseVision', 'modules.model_conclr.ConCLR_Vision'
CLIP = 0.5  # small enough that the tiny model's gradients are clipped: clipping must see the whole step


def _config(tmp_path, model_name: str) -> Config:
    conclr = model_name == CONCLR
    model = {'name': model_name, 'vision': dict(TINY_VISION, dropout=0.0,
                                                loss_weight=[1.0, 0.5, 0.5] if conclr else 1.0)}
    if conclr:
        model['projection'] = {'channels': 8}
    return Config(write_config(tmp_path / 'config.yaml', **{
        'global': {'name': 'acc', 'workdir': str(tmp_path / 'workdir'), 'seed': 0},
        'dataset': {'max_length': 12, 'image_width': 64},
        # plain SGD: the update is the gradient itself (Adam divides by |gradient| and so magnifies rounding
        # differences of gradients near 0 to whole steps)
        'optimizer': {'type': 'SGD', 'lr': 0.05, 'clip_grad': CLIP, 'args': {'betas': None}},
        'model': model}))


class _Samples(Dataset):
    """Random images with words of different lengths (so micro-batches count different numbers of slots)."""

    def __init__(self, n: int, config: Config, seed: int = 0):
        charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, config.dataset_image_height, config.dataset_image_width, generator=g)
        letters = 'abcdefghij0123'
        words = [''.join(letters[int(i)] for i in torch.randint(0, len(letters), (int(k),), generator=g))
                 for k in torch.randint(1, 11, (n,), generator=g)]
        encoded = [charset.onehot(w) for w in words]
        self.labels = torch.stack([torch.as_tensor(e[0]) for e in encoded]).float()
        self.lengths = torch.tensor([int(e[1]) for e in encoded])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], (self.labels[i], self.lengths[i])


class _FrozenBatchNorm(Callback):
    """BatchNorm in eval mode during training (fastai puts the model in train mode every epoch); no validation."""

    _order = -100

    def __init__(self, model: nn.Module):
        self.model = model

    def on_epoch_begin(self, **kwargs) -> dict:
        return {'skip_validate': True}

    def on_batch_begin(self, **kwargs) -> None:
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _learner_run(config: Config, model: nn.Module, data: Dataset, batch: int, accumulate: int,
                 conaug: bool = False, env: DistEnv | None = None) -> nn.Module:
    """Fit one epoch over `data` in loader batches of `batch`, `accumulate` of them per optimiser step (as one
    rank of `env` when given)."""
    loader = DataLoader(data, batch_size=batch, shuffle=False, drop_last=True, generator=torch.Generator())
    learn = build_learner(config, model, loader, loader, CPU)
    callbacks = [_FrozenBatchNorm(model), GradientClipping(learn, CLIP, accumulate)]
    if env is not None:
        callbacks.append(DistributedTrainer(learn, env))
    if accumulate > 1:
        callbacks.append(GradientAccumulation(learn, accumulate))
    if conaug:
        callbacks.append(ConAugPretransform(side='fixed'))
    learn.fit(1, lr=config.optimizer_lr, callbacks=callbacks)
    return model


def _assert_same_weights(a: nn.Module, b: nn.Module, start: nn.Module) -> None:
    moved = 0.0
    for (name, p), q, s in zip(a.named_parameters(), b.parameters(), start.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), (name, (p - q).abs().max().item())
        moved = max(moved, (p - s).abs().max().item())
    assert moved > 1e-3  # the steps did change the weights


@pytest.mark.parametrize('accumulate', [2, 3])
def test_accumulated_micro_batches_equal_one_batch_of_k_times_the_size_abinet(tmp_path, accumulate):
    config = _config(tmp_path, ABINET)
    micro, steps = 4, 2
    data = _Samples(micro * accumulate * steps, config)
    start = randomise(build_model(config), seed=1)
    big = _learner_run(config, copy.deepcopy(start), data, micro * accumulate, 1)
    accumulated = _learner_run(config, copy.deepcopy(start), data, micro, accumulate)
    _assert_same_weights(accumulated, big, start)


def accumulated_rank(rank: int, folder: str) -> None:
    """One of 2 processes: its half of every global batch of 8 as 2 accumulated micro-batches of 2 (run_ranks)."""
    (Path(folder) / f'rank{rank}').mkdir()
    config = _config(Path(folder) / f'rank{rank}', ABINET)
    data = _Samples(16, config)
    mine = Subset(data, [i for i in range(16) if (i % 8) // 4 == rank])  # step s: samples 8s + 4r .. 8s + 4r + 3
    model = _learner_run(config, randomise(build_model(config), seed=1), mine, 2, 2,
                         env=DistEnv(rank=rank, world_size=2, local_rank=rank))
    torch.save(model.state_dict(), Path(folder) / f'rank{rank}.pth')


def test_two_processes_accumulating_equal_one_batch_of_the_global_size(tmp_path):
    """Micro-batches weighted by their slots over every process (DDP, gloo): the update of one global batch."""
    job = run_ranks('tests.callbacks.test_accumulate:accumulated_rank', 2, [str(tmp_path)], timeout=180)
    assert not job.timed_out and job.returncodes == [0, 0], job.outputs
    (tmp_path / 'single').mkdir()
    config = _config(tmp_path / 'single', ABINET)
    start = randomise(build_model(config), seed=1)
    big = _learner_run(config, copy.deepcopy(start), _Samples(16, config), 8, 1)
    for rank in range(2):
        ranked = copy.deepcopy(start)
        ranked.load_state_dict(torch.load(tmp_path / f'rank{rank}.pth', weights_only=True))
        _assert_same_weights(ranked, big, start)


def test_accumulated_conclr_equals_a_plain_reference_loop(tmp_path):
    config = _config(tmp_path, CONCLR)
    micro, accumulate, steps = 4, 2, 2
    data = _Samples(micro * accumulate * steps, config)
    start = randomise(build_model(config), seed=2)
    torch.manual_seed(5)  # ConAug's draws: the same sequence in both runs
    accumulated = _learner_run(config, copy.deepcopy(start), data, micro, accumulate, conaug=True)

    torch.manual_seed(5)
    model = copy.deepcopy(start).train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    loss_func = build_loss(config, True)
    opt = optimizer_func(config)(model.parameters(), lr=config.optimizer_lr)
    conaug = ConAugPretransform(side='fixed')
    batches = list(DataLoader(data, batch_size=micro, shuffle=False, generator=torch.Generator()))
    for step in range(steps):
        for x, (labels, lengths) in batches[step * accumulate:(step + 1) * accumulate]:
            views = conaug.on_batch_begin(last_input=x, last_target=(labels, lengths), train=True)
            loss = loss_func(model(*views['last_input']), *views['last_target']) / accumulate
            loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
    _assert_same_weights(accumulated, model, start)


def test_step_ends_and_bad_values():
    assert [step_ends(i, 3) for i in range(6)] == [False, False, True, False, False, True]
    assert all(step_ends(i, 1) for i in range(4))
    assert check_accumulate(4) == 4
    for bad in (0, -1, 2.0, True, '2'):
        with pytest.raises(ConfigError, match='training.accumulate'):
            check_accumulate(bad)
    assert local_batch_size(384, 4, 2) == 48
    with pytest.raises(ConfigError, match=r'4 processes x training.accumulate 5'):
        local_batch_size(384, 4, 5)


def test_sampler_cuts_epochs_to_whole_steps_and_skips_steps():
    data = list(range(23))
    sampler = ResumableDistributedSampler(data, 1, 0, seed=3, batch_size=4, accumulate=2)
    assert sampler.steps_per_epoch == 2 and len(sampler) == 16
    full = list(sampler)
    sampler.resume_at(0, 1)
    assert list(sampler) == full[8:]


def _lines(text: str) -> dict[int, str]:
    return {int(m[1]): line for line in text.splitlines() if (m := re.search(r'iter (\d+): loss', line))}


def test_accumulated_training_counts_steps_and_resumes_exactly(tmp_path):
    train_root = render_lmdb(tmp_path / 'train', 40, seed=1)
    test_root = render_lmdb(tmp_path / 'test', 8, seed=2)
    # batch 8 = 2 x 4: 5 optimiser steps per epoch; lr 1e-3 in epoch 0, 1e-4 after
    path = tiny_config(tmp_path, train_root, [test_root], conclr=True, max_iters=3, show_iters=1, eval_iters=100,
                       save_iters=3, accumulate=2)
    path.write_text(path.read_text().replace('lr: 0.003', 'lr: 0.001\n  scheduler:\n    periods: [1, 1]\n'
                                                                    '    gamma: 0.1'))
    config = Config(path)
    assert main.main(['--config', str(path)]) == 0
    first = (config.workdir / 'train.txt').read_text()
    assert '1 process: global batch 8 = 1 x 4 x 2 accumulated micro-batches' in first
    assert 'ConAug pairs and contrastive negatives come from one micro-batch of 4 images' in first
    assert sorted(_lines(first)) == [1, 2, 3]
    state = load_checkpoint(config.workdir / 'run_0_3.pth')
    assert (state['iteration'], state['batch_in_epoch'], state['iters_per_epoch'], state['accumulate']) == (3, 3, 5, 2)

    path.write_text(path.read_text().replace('max_iters: 3', 'max_iters: 7'))
    assert main.main(['--config', str(path), '--resume', str(config.workdir / 'run_0_3.pth')]) == 0
    after = (config.workdir / 'train.txt').read_text()[len(first):]
    lines = _lines(after)
    assert sorted(lines) == [4, 5, 6, 7]
    for it, line in lines.items():
        assert f'epoch {(it - 1) // 5} iter {it}:' in line
        assert ('lr = 1.00e-03' if it <= 5 else 'lr = 1.00e-04') in line

    reference = Config(path)
    reference.global_name = 'reference'
    main.train(reference, CPU)
    resumed = load_checkpoint(config.workdir / 'run_1_7.pth')
    uninterrupted = load_checkpoint(reference.workdir / 'reference_1_7.pth')
    for key, value in uninterrupted['model'].items():
        assert torch.equal(resumed['model'][key], value), key


def test_fp16_accumulation_scales_once_per_step_and_an_overflow_skips_the_whole_step(tmp_path):
    from functools import partial

    from fastai.basic_data import DataBunch
    from fastai.basic_train import Learner
    from torch.utils.data import TensorDataset

    from callbacks.amp import MixedPrecision

    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(12, 1, 6, 6, generator=g), torch.randn(12, 2, generator=g)
    xs[10:] *= 1e5  # the third step's second micro-batch overflows float16: the scaler skips that whole step

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))

    net, reference = model(), model()
    loader = DataLoader(TensorDataset(xs, ys), batch_size=2, shuffle=False)
    learn = Learner(DataBunch(loader, loader, device=CPU), net, opt_func=partial(torch.optim.SGD, lr=0.1),
                    loss_func=nn.MSELoss(), wd=0.0, true_wd=False, path=str(tmp_path), model_dir='.', silent=True)
    precision = MixedPrecision(learn, 'fp16', 'cpu', init_scale=256.0, accumulate=2)
    learn.callbacks.append(precision)
    learn.fit(1, lr=0.1, callbacks=[_FrozenBatchNorm(net), GradientAccumulation(learn, 2)])

    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cpu', init_scale=256.0)
    for step in range(2):  # the two steps before the overflowing one
        for k in range(2):
            i = 4 * step + 2 * k
            with torch.autocast('cpu', dtype=torch.float16):
                out = reference(xs[i:i + 2])
            scaler.scale(nn.functional.mse_loss(out.float(), ys[i:i + 2]) / 2).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    for p, q in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    # the overflowing step was skipped whole, and the scaler halved its scale once: it unscaled and stepped once
    # per optimiser step, not per micro-batch
    assert precision.scaler.get_scale() == 128.0


def test_a_non_finite_micro_batch_skips_its_whole_step(tmp_path):
    import logging
    from functools import partial

    from fastai.basic_data import DataBunch
    from fastai.basic_train import Learner
    from torch.utils.data import TensorDataset

    from callbacks.nonfinite import NonFiniteGuard

    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(12, 3, generator=g), torch.randn(12, 2, generator=g)
    xs[6] = float('nan')  # step 2 (samples 4-7), its second micro-batch

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(3, 2)

    net, reference = model(), model()
    loader = DataLoader(TensorDataset(xs, ys), batch_size=2, shuffle=False)
    learn = Learner(DataBunch(loader, loader, device=CPU), net, opt_func=partial(torch.optim.SGD, lr=0.1),
                    loss_func=nn.MSELoss(), wd=0.0, true_wd=False, path=str(tmp_path), model_dir='.', silent=True)
    guard = NonFiniteGuard(learn, 5, logging.getLogger('test_accumulate'), accumulate=2)
    learn.fit(1, lr=0.1, callbacks=[_FrozenBatchNorm(net), guard, GradientAccumulation(learn, 2)])

    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in (0, 2):  # step 1 is skipped whole, its finite first micro-batch included
        for k in range(2):
            i = 4 * step + 2 * k
            (nn.functional.mse_loss(reference(xs[i:i + 2]), ys[i:i + 2]) / 2).backward()
        opt.step()
        opt.zero_grad()
    assert guard.skipped == 1
    for p, q in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)
