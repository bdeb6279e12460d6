"""Mixed precision callback: bf16 autocast on the CPU, fp16 with a gradient scaler, float32 losses."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401

from functools import partial

import pytest
import torch
from fastai.basic_data import DataBunch
from fastai.basic_train import Learner
from fastai.callback import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import main
import training.train
from callbacks.amp import MixedPrecision, amp_mode
from configuration import REPO_ROOT, Config
from runtime.checkpoint import load_checkpoint
from tests.helpers import render_lmdb, tiny_config


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def _learner(tmp_path, model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, lr: float) -> Learner:
    dl = DataLoader(TensorDataset(xs, ys), batch_size=len(xs) // 2, shuffle=False)
    data = DataBunch(dl, DataLoader(TensorDataset(xs, ys), batch_size=len(xs)), device=torch.device('cpu'))
    learn = Learner(data, model, opt_func=partial(torch.optim.SGD, lr=lr), loss_func=nn.MSELoss(), wd=0.0,
                    true_wd=False, path=str(tmp_path), model_dir='.', silent=True)
    return learn


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 6, 6, generator=generator), torch.randn(8, 2, generator=generator)


@pytest.mark.parametrize('value, expected', [(None, None), (False, None), ('off', None), ('BF16', 'bf16'),
                                             ('fp16', 'fp16')])
def test_amp_mode_reads_config_values(value, expected):
    assert amp_mode(value) == expected


def test_amp_auto_is_bf16_on_a_cuda_gpu_that_has_it_and_off_elsewhere(monkeypatch):
    import callbacks.amp as amp_module

    assert amp_mode('auto') is None and amp_mode('auto', 'cpu') is None
    assert amp_mode('AUTO', torch.device('cpu')) is None
    monkeypatch.setattr(amp_module, 'bf16_supported', lambda device: torch.device(device).type == 'cuda')
    assert amp_mode('auto', 'cuda:0') == 'bf16'
    monkeypatch.setattr(amp_module, 'bf16_supported', lambda device: False)  # a GPU before Ampere
    assert amp_mode('auto', 'cuda:0') is None
    assert amp_mode('fp16', 'cpu') == 'fp16'  # an explicit mode is kept


def test_shipped_gpu_recipes_use_amp_auto():
    for name in ('pretrain_vision_model.yaml', 'conclr_pretrain_vision_model.yaml'):
        assert Config(REPO_ROOT / 'configs' / name).training_amp == 'auto', name


def test_amp_mode_rejects_unknown_values():
    with pytest.raises(ValueError, match='bf16'):
        amp_mode('fp8')


def test_bf16_steps_equal_plain_autocast_steps(tmp_path):
    xs, ys = _data()
    model, reference = _model(), _model()
    seen = []
    model[3].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    learn = _learner(tmp_path, model, xs, ys, lr=0.1)
    learn.callbacks.append(MixedPrecision(learn, 'bf16', 'cpu'))
    learn.fit(1, lr=0.1)

    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for x, y in ((xs[:4], ys[:4]), (xs[4:], ys[4:])):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = reference(x)
        loss = nn.functional.mse_loss(out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert seen == [torch.bfloat16] * 3  # two training batches, then fastai's validation pass
    for p, q in zip(model.parameters(), reference.parameters()):
        assert p.dtype == torch.float32 and torch.equal(p, q)
    assert not torch.is_autocast_enabled('cpu')


def test_fp16_scaler_steps_like_the_reference_and_skips_an_overflow(tmp_path):
    xs, ys = _data()
    xs[4:] *= 1e5  # the second batch overflows float16 (max 65504): its gradients are not finite
    model, reference = _model(), _model()
    learn = _learner(tmp_path, model, xs, ys, lr=0.1)
    precision = MixedPrecision(learn, 'fp16', 'cpu', init_scale=256.0)
    learn.callbacks.append(precision)
    after_first = []
    learn.fit(1, lr=0.1, callbacks=[_AfterFirstBatch(model, after_first)])

    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cpu', init_scale=256.0)
    with torch.autocast('cpu', dtype=torch.float16):
        out = reference(xs[:4])
    scaler.scale(nn.functional.mse_loss(out.float(), ys[:4])).backward()
    scaler.step(opt)
    scaler.update()
    for p, q in zip(after_first[0], reference.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), reference.parameters()):  # the overflowing step changed nothing
        assert torch.equal(p, q)
    assert precision.scaler.get_scale() == 128.0  # halved once, by the overflow


class _AfterFirstBatch(Callback):
    """Keeps a copy of the weights after the first training batch (its optimiser step included)."""

    def __init__(self, model: nn.Module, store: list):
        self.model, self.store = model, store

    def on_batch_end(self, num_batch: int, train: bool, **kwargs) -> None:
        if train and num_batch == 0:
            self.store.append([p.detach().clone() for p in self.model.parameters()])


def test_bf16_training_through_main(tmp_path, monkeypatch):
    train_root = render_lmdb(tmp_path / 'train', 32, seed=1)
    test_root = render_lmdb(tmp_path / 'test', 8, seed=2)
    path = tiny_config(tmp_path, train_root, [test_root], max_iters=6, show_iters=3, eval_iters=6, save_iters=6)
    path.write_text(path.read_text().replace('training:\n', 'training:\n  amp: bf16\n'))
    config = Config(path)
    dtypes: list[torch.dtype] = []
    build = main.build_model

    def build_and_watch(cfg):
        model = build(cfg)
        model.cls.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        return model

    monkeypatch.setattr(training.train, 'build_model', build_and_watch)
    callback = main.train(config, torch.device('cpu'))
    assert callback.iteration == 6 and torch.bfloat16 in dtypes
    assert all(torch.isfinite(torch.tensor(h['loss'])) for h in callback.train_history + callback.history)
    state = load_checkpoint(config.workdir / 'run_1_6.pth')
    assert all(v.dtype == torch.float32 for v in state['model'].values() if v.is_floating_point())
    assert 'mixed precision bf16' in (config.workdir / 'train.txt').read_text()
