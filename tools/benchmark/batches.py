"""The models and synthetic batches the benchmark times: model configs by size, random words rendered as
batches, one training step of a built model."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (must come before fastai)

import os
from typing import Callable

import numpy as np
import torch
from torch import nn

from callbacks.conaug import ConAugPretransform
from configuration import REPO_ROOT, Config
from tools.benchmark.timing import autocast
from training.builders import build_loss, is_conclr, optimizer_func
from utils import CharsetMapper

ABINET = 'modules.model_vision.BaseVision'
CONCLR = 'modules.model_conclr.ConCLR_Vision'
QUARTER_CONFIG = REPO_ROOT / 'configs' / 'quickstart_conclr_vision_model.yaml'
# Config keys that fix the model's size and its training losses; a --config file contributes only these.
MODEL_KEY_PREFIXES = ('model_vision_', 'model_projection_', 'dataset_image_', 'dataset_max_length',
                      'dataset_charset_path', 'optimizer_', 'training_tau', 'training_alpha', 'training_include_eos',
                      'conaug_side')
MODEL_KEY_EXCLUDED = ('model_vision_loss_weight', 'model_vision_checkpoint')
TINY = {'model_vision_d_model': 16, 'model_vision_nhead': 2, 'model_vision_d_inner': 32, 'model_vision_backbone_ln': 1,
        'model_vision_resnet_widths': [4, 4, 8, 8, 16], 'model_vision_resnet_layers': [1, 1, 1, 1, 1],
        'model_vision_attention_channels': 4, 'model_projection_channels': 8}
SIZES = ('tiny', 'quarter', 'official')


def model_config(model_name: str, size: str = 'quarter', config_path: str | os.PathLike | None = None) -> Config:
    """Template config with the model-size keys of `size` (or of `config_path`) and `model.name` set."""
    config = Config()
    if config_path is not None or size == 'quarter':
        source = Config(config_path if config_path is not None else QUARTER_CONFIG)
        config.update({k: v for k, v in source.items()
                       if k.startswith(MODEL_KEY_PREFIXES) and k not in MODEL_KEY_EXCLUDED})
    elif size == 'tiny':
        config.update(TINY)
    elif size != 'official':
        raise ValueError(f'unknown model size {size!r}; expected one of {", ".join(SIZES)}')
    config.model_name = model_name
    config.model_vision_loss_weight = [1.0, 0.5, 0.5] if model_name == CONCLR else 1.0
    return config


def random_words(n: int, charset: CharsetMapper, rng: np.random.Generator, min_len: int = 3,
                 max_len: int = 12) -> list[str]:
    """n random words of the charset's characters, lengths uniform in [min_len, max_len]."""
    chars = [c for c in charset.chars[1:]]
    return [''.join(rng.choice(chars, size=int(rng.integers(min_len, max_len + 1)))) for _ in range(n)]


def make_batch(n: int, charset: CharsetMapper, h: int, w: int, device: torch.device, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A synthetic training batch: normalised-looking images N x 3 x H x W, one-hot targets N x T x C, lengths."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=gen)
    targets = [charset.onehot(word) for word in random_words(n, charset, rng)]
    labels = torch.stack([t[0] for t in targets]).float()
    lengths = torch.tensor([int(t[1]) for t in targets], dtype=torch.long)
    return images.to(device).contiguous(), labels.to(device).contiguous(), lengths.to(device)


def make_train_step(model: nn.Module, config: Config, batch: tuple[torch.Tensor, ...], device: torch.device,
                    precision: str = 'amp_off', channels_last: bool = False) -> Callable[[], torch.Tensor]:
    """One training step as training does it: (ConAug,) forward, loss, backward, clipping, Adam step; returns the
    step's loss. `channels_last` stores the model channels-last on CUDA, as training.channels_last does."""
    conclr = is_conclr(model)
    model.to(device).train()
    if channels_last and device.type == 'cuda':
        model.to(memory_format=torch.channels_last)
    opt = optimizer_func(config)(model.parameters(), lr=config.optimizer_lr)  # training's optimiser and loss
    loss_func = build_loss(config, conclr)
    pretransform = ConAugPretransform(side=config.conaug_side) if conclr else None
    scaler = torch.amp.GradScaler(device.type) if precision == 'fp16' else None
    clip = config.optimizer_clip_grad
    images, labels, lengths = batch

    def step() -> float:
        inputs, targets = [images], (labels, lengths)
        if pretransform is not None:  # the fastai callback's code path, as in training
            views = pretransform.on_batch_begin(last_input=images, last_target=(labels, lengths), train=True)
            inputs, targets = views['last_input'], views['last_target']
        with autocast(device, precision):
            outputs = model(*inputs)
            loss = loss_func(outputs, *targets)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return loss.detach()

    return step
