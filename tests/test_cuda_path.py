"""The GPU path (marker `cuda`): training steps under amp off / bf16 / fp16 against the float32 CPU run, ConAug and
the contrastive loss on the GPU against the CPU, GPU checkpoints loaded on the CPU, channels-last and pinned memory.

Skipped without a GPU (tests/conftest.py). `tools/gpu_check.sh` runs them on one; its `--dry-run` runs them on the
CPU with the tiny model (CONCLR_TEST_DEVICE=cpu, CONCLR_TEST_SIZE=tiny), so this code cannot rot between GPU sessions.

Tolerances, relative, on every step's loss of a 5-step main.train run against the float32 CPU run of the same seed,
data and ConAug draws (dropout off): amp off 1 % (cuDNN convolutions run in TF32 by default), bf16 and fp16 2 %
(the target for the final loss, here asked of every step).
"""

from __future__ import annotations

import os

import pytest
import torch
import yaml

import callbacks.conaug as conaug_module
import main
from callbacks.conaug import ConAugPretransform, conaug, draw_conaug_params
from callbacks.iteration import IterationCallback
from configuration import REPO_ROOT, Config
from losses.contrastive import contrastive_loss
from runtime.checkpoint import load_checkpoint, load_weights
from tests.helpers import TINY_VISION, render_lmdb, write_config
from utils import CharsetMapper

pytestmark = pytest.mark.cuda

DEVICE = torch.device(os.environ.get('CONCLR_TEST_DEVICE', 'cuda'))
SIZE = os.environ.get('CONCLR_TEST_SIZE', 'quarter')
TOLERANCE = {'off': 0.01, 'bf16': 0.02, 'fp16': 0.02}
STEPS, BATCH = 5, 16
ABINET, CONCLR = 'modules.model_vision.BaseVision', 'modules.model_conclr.ConCLR_Vision'


def vision_keys() -> dict:
    """model.vision keys of the size under test: tiny (dry run) or the quick start's quarter width."""
    if SIZE == 'tiny':
        return dict(TINY_VISION)
    quarter = yaml.safe_load((REPO_ROOT / 'configs' / 'quickstart_conclr_vision_model.yaml').read_text())
    return {k: v for k, v in quarter['model']['vision'].items() if k != 'loss_weight'}


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('cuda_lmdb')
    return render_lmdb(root / 'train', STEPS * BATCH, seed=1), render_lmdb(root / 'test', BATCH, seed=2)


def run_config(folder, lmdbs, model_name: str, amp: str = 'off', **dataset) -> Config:
    """A 5-step run without dropout or augmentation; the last step saves a periodic checkpoint."""
    train_root, test_root = lmdbs
    conclr = model_name == CONCLR
    model = {'name': model_name, 'vision': {**vision_keys(), 'dropout': 0.0,
                                            'loss_weight': [1.0, 0.5, 0.5] if conclr else 1.0}}
    if conclr:
        model['projection'] = {'channels': 16}
    folder.mkdir(parents=True, exist_ok=True)
    return Config(write_config(
        folder / 'config.yaml',
        **{'global': {'name': 'run', 'workdir': str(folder / 'workdir'), 'seed': 0},
           'dataset': {'train': {'roots': [str(train_root)], 'batch_size': BATCH},
                       'test': {'roots': [str(test_root)], 'batch_size': BATCH}, 'num_workers': 0,
                       'data_aug': False, 'max_length': 12, **dataset},
           'training': {'epochs': 10, 'max_iters': STEPS, 'show_iters': 1, 'eval_iters': 1000,
                        'save_iters': STEPS, 'amp': amp},
           'optimizer': {'lr': 0.001, 'scheduler': {'periods': [10]}},
           'model': model}))


def train(config: Config, device: torch.device, monkeypatch) -> IterationCallback:
    """main.train with ConAug drawing from its own seeded generator.

    Dropout draws from the CPU generator on the CPU (even at p = 0) and from the CUDA one on a GPU, so the global
    CPU generator that ConAug uses would drift apart between the two runs.
    """
    own = torch.Generator().manual_seed(7)

    def draw(n, side='fixed', generator=None, device=None):
        return draw_conaug_params(n, side, generator=own, device=device)

    monkeypatch.setattr(conaug_module, 'draw_conaug_params', draw)
    return main.train(config, device)


def step_losses(callback) -> list[float]:
    """The loss of every step (show_iters 1)."""
    losses = [h['loss'] for h in callback.train_history]
    assert len(losses) == STEPS, callback.train_history
    return losses


def max_relative(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


_REFERENCE: dict[str, list[float]] = {}


def cpu_reference(tmp_path_factory, lmdbs, model_name: str, monkeypatch) -> list[float]:
    """The float32 CPU run's step losses (once per model)."""
    if model_name not in _REFERENCE:
        folder = tmp_path_factory.mktemp('cpu_reference')
        _REFERENCE[model_name] = step_losses(train(run_config(folder, lmdbs, model_name), torch.device('cpu'),
                                                   monkeypatch))
    return _REFERENCE[model_name]


@pytest.mark.parametrize('amp', ['off', 'bf16', 'fp16'])
@pytest.mark.parametrize('model_name', [ABINET, CONCLR])
def test_training_steps_match_the_float32_cpu_run(tmp_path, tmp_path_factory, lmdbs, model_name, amp, monkeypatch):
    reference = cpu_reference(tmp_path_factory, lmdbs, model_name, monkeypatch)
    config = run_config(tmp_path, lmdbs, model_name, amp)
    callback = train(config, DEVICE, monkeypatch)
    losses = step_losses(callback)
    worst = max_relative(losses, reference)
    print(f'{model_name} amp {amp} on {DEVICE}: losses {[round(x, 5) for x in losses]}, float32 CPU '
          f'{[round(x, 5) for x in reference]}, largest relative difference {worst:.2e}')
    assert worst <= TOLERANCE[amp], (losses, reference)

    # The checkpoint written on the device loads on the CPU (weights_only) and gives the device model's outputs.
    path, = config.workdir.glob(f'run_*_{STEPS}.pth')
    state = load_checkpoint(path)
    assert all(t.device.type == 'cpu' for t in state['model'].values())
    assert (state.get('scaler') is not None) == (amp == 'fp16')
    cpu_model = main.build_model(config)
    load_weights(cpu_model, path)
    device_model = callback.learn.model.eval()
    images = torch.randn(4, 3, config.dataset_image_height, config.dataset_image_width)
    with torch.no_grad():
        expected = device_model(images.to(DEVICE))['logits'].float().cpu()
        got = cpu_model.eval()(images)['logits']
    assert torch.allclose(got, expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


def test_channels_last_and_pinned_memory_loading_train(tmp_path, lmdbs, monkeypatch):
    reference = train(run_config(tmp_path / 'plain', lmdbs, ABINET, 'bf16'), DEVICE, monkeypatch)
    config = run_config(tmp_path / 'cl', lmdbs, ABINET, 'bf16', num_workers=2, pin_memory=True)
    config.training_channels_last = True
    callback = train(config, DEVICE, monkeypatch)
    cuda = DEVICE.type == 'cuda'
    conv = next(m for m in callback.learn.model.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == cuda  # ignored on the CPU (a warning says so)
    loader = callback.learn.data.train_dl.dl
    assert loader.pin_memory == cuda
    images = next(iter(loader))[0]
    assert images.is_pinned() == cuda
    worst = max_relative(step_losses(callback), step_losses(reference))
    print(f'channels-last + pinned workers vs plain, bf16 on {DEVICE}: largest relative difference {worst:.2e}')
    assert worst <= TOLERANCE['bf16']


def test_conaug_on_the_device_equals_the_cpu():
    charset = CharsetMapper(REPO_ROOT / 'data' / 'charset_36.txt', 25)
    gen = torch.Generator().manual_seed(3)
    n = 24
    images = torch.randn(n, 3, 32, 128, generator=gen)
    words = [''.join('abcdefgh0123'[int(i)] for i in torch.randint(0, 12, (int(k),), generator=gen))
             for k in torch.randint(1, 14, (n,), generator=gen)]
    targets = [charset.onehot(w) for w in words]
    labels = torch.stack([t[0] for t in targets]).float()
    lengths = torch.tensor([int(t[1]) for t in targets])
    for side in ('fixed', 'sample'):
        perm1, left1, perm2, left2 = draw_conaug_params(n, side, generator=gen)
        for perm, left in ((perm1, left1), (perm2, left2)):
            cpu = conaug(images, labels, lengths, perm, left)
            dev = conaug(images.to(DEVICE), labels.to(DEVICE), lengths.to(DEVICE), perm.to(DEVICE), left.to(DEVICE))
            assert all(t.device.type == DEVICE.type for t in dev)
            assert torch.allclose(dev[0].cpu(), cpu[0], rtol=1e-5, atol=1e-5)
            for a, b in zip(dev[1:], cpu[1:]):
                assert torch.equal(a.cpu(), b)
    # the callback's own path: the same global seed gives the same three views on either device
    views = {}
    for device in (torch.device('cpu'), DEVICE):
        torch.manual_seed(11)
        views[device.type] = ConAugPretransform(side='sample').on_batch_begin(
            last_input=images.to(device), last_target=(labels.to(device), lengths.to(device)), train=True)
    cpu, dev = views['cpu'], views[DEVICE.type]
    for a, b in zip(dev['last_input'], cpu['last_input']):
        assert torch.allclose(a.cpu(), b, rtol=1e-5, atol=1e-5)
    for a, b in zip(dev['last_target'], cpu['last_target']):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize('include_eos', [False, True])
def test_contrastive_loss_on_the_device_equals_the_cpu(include_eos):
    from tools.benchmark.checks import contrastive_inputs

    inputs = contrastive_inputs(32, 26, 64, 37, torch.device('cpu'), seed=4)
    dev_inputs = [t.detach().to(DEVICE).requires_grad_(t.requires_grad) for t in inputs]
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')  # no TF32: the comparison is of the loss, not of TF32
    try:
        values, grads = [], []
        for z in (inputs, dev_inputs):
            loss = contrastive_loss(*z[:6], tau=2.0, include_eos=include_eos, valid=z[6])
            values.append(loss.item())
            grads.append([g.cpu() for g in torch.autograd.grad(loss, (z[0], z[1]))])
    finally:
        torch.set_float32_matmul_precision(precision)
    assert values[1] == pytest.approx(values[0], rel=1e-5)
    for a, b in zip(grads[1], grads[0]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
