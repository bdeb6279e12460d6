"""Loading a vision model for inference (demo, ONNX export, t-SNE) and choosing its device."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from configuration import Config
from modules.model_vision import BaseVision
from runtime.checkpoint import load_weights


class InferenceError(RuntimeError):
    """Input an inference tool cannot work with: no image, no checkpoint, no such device."""


def load_inference_model(config: Config, checkpoints: str | Sequence[str], device: torch.device | str = 'cpu',
                         log: Callable[[str], None] | None = None) -> BaseVision:
    """BaseVision built from `config` with the checkpoint(s) loaded, in eval mode on `device`.

    Any vision checkpoint fits (official ABINet-Vision, full ABINet with `vision.` keys, BaseVision, ConCLR in
    this project's or the reproduction's key names): the ConCLR projection head plays no part in recognition, so
    it is neither built nor required (`log`, default the project logger, says it was left out).
    """
    model = BaseVision(config)
    for path in [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else checkpoints:
        load_weights(model, path, strict=config.model_strict, log=log)
    return model.to(device).eval()


def select_device(cuda: int) -> torch.device:
    """cuda:<index>, or the CPU for a negative index."""
    if cuda < 0:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise InferenceError(f'--cuda {cuda}: no CUDA device available (use --cuda -1 for the CPU)')
    if cuda >= torch.cuda.device_count():
        raise InferenceError(f'--cuda {cuda}: only {torch.cuda.device_count()} CUDA device(s)')
    return torch.device(f'cuda:{cuda}')
