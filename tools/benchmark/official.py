"""Official ABINet-Vision loaded beside this project's model in one process, on the same weights and batch, and
their training steps and forward passes timed in alternation (tools/official_abinet.py is its command line)."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (must come before fastai)

import contextlib
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import torch
from torch import nn

from tools.benchmark.batches import ABINET, make_batch, make_train_step, model_config
from tools.benchmark.timing import interleaved_medians
from training.builders import build_model
from utils import CharsetMapper

CLASHING = ('modules', 'utils', 'losses')
CPU = torch.device('cpu')


def _clashes(name: str) -> bool:
    return any(name == top or name.startswith(top + '.') for top in CLASHING)


@contextlib.contextmanager
def _official_imports(root: Path) -> Iterator[None]:
    """sys.path and sys.modules as the official tree sees them, restored afterwards."""
    saved = {name: sys.modules.pop(name) for name in [n for n in sys.modules if _clashes(n)]}
    path, cwd = list(sys.path), os.getcwd()
    sys.path.insert(0, str(root))
    os.chdir(root)  # official utils.Config opens configs/template.yaml relative to the working directory
    try:
        yield
    finally:
        for name in [n for n in sys.modules if _clashes(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
        sys.path[:] = path
        os.chdir(cwd)


def load_official(root: str | os.PathLike, charset_path: str) -> tuple[nn.Module, nn.Module]:
    """Official BaseVision of configs/pretrain_vision_model.yaml (charset `charset_path`) and its MultiLosses."""
    root = Path(root).resolve()
    if not (root / 'modules' / 'model_vision.py').is_file():
        raise SystemExit(f'--official {root}: not an ABINet checkout (no modules/model_vision.py)')
    with _official_imports(root):
        modules: dict[str, ModuleType] = {n: importlib.import_module(n) for n in
                                          ('utils', 'losses', 'modules.model_vision')}
        config = modules['utils'].Config('configs/pretrain_vision_model.yaml')
        config.dataset_charset_path = str(Path(charset_path).resolve())
        config.model_vision_checkpoint = None
        return modules['modules.model_vision'].BaseVision(config), modules['losses'].MultiLosses(one_hot=True)


def official_step(model: nn.Module, loss_fn: nn.Module, batch: tuple[torch.Tensor, ...], lr: float,
                  clip: float = 20.0) -> Callable[[], torch.Tensor]:
    """Official ABINet's training step on one fixed batch (what its fastai Learner runs per iteration)."""
    images, labels, lengths = batch
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> torch.Tensor:
        model.train()  # here, not when built: closures over one model may be timed in any order
        loss = loss_fn(model(images), labels, lengths)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss.detach()
    return step


def forward_only(model: nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    """Inference as evaluation runs it: eval mode, no autograd."""
    def run() -> Any:
        model.eval()
        with torch.no_grad():
            return model(images)
    return run


def compare(official_root: str, batch: int, infer_batch: int, rounds: int) -> dict[str, float]:
    """img/s of both training steps and both forward passes, and the project / official ratios."""
    config = model_config(ABINET, 'official')
    torch.manual_seed(0)
    ours = build_model(config)
    official, official_loss = load_official(official_root, config.dataset_charset_path)
    official.load_state_dict(ours.state_dict())
    charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
    probe = make_batch(2, charset, config.dataset_image_height, config.dataset_image_width, CPU)[0]
    torch.testing.assert_close(forward_only(ours, probe)()['logits'], forward_only(official, probe)()['logits'],
                               rtol=1e-4, atol=1e-4)
    data = make_batch(batch, charset, config.dataset_image_height, config.dataset_image_width, CPU)
    train = interleaved_medians({'official': official_step(official, official_loss, data, config.optimizer_lr),
                                 'project': make_train_step(ours, config, data, CPU)}, rounds, 1, CPU)
    images = make_batch(infer_batch, charset, config.dataset_image_height, config.dataset_image_width, CPU)[0]
    infer = interleaved_medians({'official': forward_only(official, images), 'project': forward_only(ours, images)},
                                rounds, 1, CPU)
    result = {}
    for kind, times, n in (('train', train, batch), ('infer', infer, infer_batch)):
        result.update({f'{kind}.official_img_s': n / times['official'], f'{kind}.project_img_s': n / times['project'],
                       f'{kind}.ratio': times['official'] / times['project']})
    return result
