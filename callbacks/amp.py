"""Mixed precision for fastai 1.0.60: autocast around the model's forward, float32 loss, GradScaler for fp16.

fastai's `loss_batch` runs: on_batch_begin -> model(*xb) -> on_loss_begin -> loss_func -> on_backward_begin ->
backward (unless skip_bwd) -> on_backward_end -> opt.step() (unless skip_step) -> on_step_end -> zero_grad.
The callback enters autocast at on_batch_begin and leaves it at on_loss_begin, where the model's outputs are
cast back to float32, so the losses are always computed in float32. With fp16 it runs the scaled backward
itself (skip_bwd), unscales the gradients at on_backward_end (before GradientClipping, `_order` 0, clips them)
and replaces fastai's step by `scaler.step` + `scaler.update` at on_step_end; a step whose gradients hold an inf
or NaN is skipped by the scaler, which then lowers its scale. With gradient accumulation (`accumulate` > 1) the
scaled backward runs for every micro-batch and the unscaling and the scaler's step only after a step's last one,
and not at all when a micro-batch of the step skipped its backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from fastai.basic_train import Learner, LearnerCallback

from callbacks.accumulate import step_ends
from configuration import ConfigError

AMP_MODES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
_OFF = {None, False, 'off', 'no', 'none', 'fp32', 'float32'}


def amp_mode(value: Any, device: torch.device | str | None = None) -> str | None:
    """'bf16', 'fp16' or None (off) from a config value (`off` in YAML reads as False); `auto` is bf16 on a CUDA
    `device` that supports it and off elsewhere (the CPU, older GPUs, or no device given)."""
    if isinstance(value, str):
        value = value.strip().lower()
    if value in _OFF:
        return None
    if value == 'auto':
        return 'bf16' if bf16_supported(device) else None
    if value not in AMP_MODES:
        raise ConfigError(f'training.amp {value!r}: expected off, auto, bf16 or fp16')
    return value


def bf16_supported(device: torch.device | str | None) -> bool:
    """Whether `device` is a CUDA GPU with bfloat16 arithmetic (Ampere or later)."""
    if device is None or torch.device(device).type != 'cuda' or not torch.cuda.is_available():
        return False
    index = torch.device(device).index
    with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
        return bool(torch.cuda.is_bf16_supported())


def to_float32(output: Any) -> Any:
    """`output` (tensor, or dicts / lists / tuples of them) with half-precision tensors cast to float32."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.dtype in (torch.float16, torch.bfloat16) else output
    if isinstance(output, dict):
        return {k: to_float32(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(to_float32(v) for v in output)
    return output


class MixedPrecision(LearnerCallback):
    """Autocast forward passes (training and evaluation) in `mode` ('bf16' or 'fp16') on `device_type`.

    Add it to `learn.callbacks` so `learn.validate` uses it too. `scaler` is the fp16 GradScaler (None for bf16);
    its `state_dict()` belongs in checkpoints.
    """

    _order = -5  # after the non-finite guard (-10), before GradientClipping (0)

    def __init__(self, learn: Learner, mode: str = 'bf16', device_type: str | None = None,
                 init_scale: float = 2.0 ** 16, accumulate: int = 1):
        super().__init__(learn)
        self.accumulate = accumulate
        if mode not in AMP_MODES:
            raise ValueError(f'mixed precision mode {mode!r}: expected one of {", ".join(AMP_MODES)}')
        if device_type is None:
            device_type = next(learn.model.parameters()).device.type
        self.mode, self.dtype, self.device_type = mode, AMP_MODES[mode], device_type
        self.scaler = torch.amp.GradScaler(device_type, init_scale=init_scale) if mode == 'fp16' else None
        self._autocast: Any = None
        self._stepping = False  # this step's micro-batches so far all ran their scaled backward
        self._step_end = True

    def _leave(self) -> None:
        if self._autocast is not None:
            self._autocast.__exit__(None, None, None)
            self._autocast = None

    def on_batch_begin(self, iteration: int = 0, train: bool = False, **kwargs: Any) -> None:
        self._leave()  # a forward that raised may have left one open
        self._first = not train or iteration % self.accumulate == 0
        self._step_end = not train or step_ends(iteration, self.accumulate)
        self._autocast = torch.autocast(device_type=self.device_type, dtype=self.dtype)
        self._autocast.__enter__()

    def on_loss_begin(self, last_output: Any, **kwargs: Any) -> dict:
        self._leave()
        return {'last_output': to_float32(last_output)}

    def on_backward_begin(self, last_loss: torch.Tensor, skip_bwd: bool, **kwargs: Any) -> dict | None:
        if self._first:
            self._stepping = True
        if self.scaler is None or skip_bwd:
            self._stepping = False
            return None
        self.scaler.scale(last_loss).backward()
        return {'skip_bwd': True}

    def on_backward_end(self, **kwargs: Any) -> dict | None:
        if self.scaler is None:
            return None
        if self._stepping and self._step_end:
            self.scaler.unscale_(self.learn.opt)
        return {'skip_step': True}  # the scaler steps at on_step_end, after gradient clipping

    def on_step_end(self, **kwargs: Any) -> None:
        if self.scaler is not None and self._stepping and self._step_end:
            self.scaler.step(self.learn.opt)
            self.scaler.update()
        if self._step_end:
            self._stepping = False

    def on_train_end(self, **kwargs: Any) -> None:
        self._leave()
