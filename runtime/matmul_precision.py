"""TF32 on CUDA: float32 matrix products and convolutions on the tensor cores (10-bit mantissa inputs, float32
accumulation), several times faster on Ampere and later at a precision training does not notice."""

from __future__ import annotations

import torch


def set_tf32(enabled: bool, device: torch.device | str) -> bool:
    """`training.tf32` on a CUDA `device`: float32 matmuls at precision 'high' (TF32) and TF32 cuDNN convolutions,
    or 'highest' and none when off; nothing on the CPU. Returns whether TF32 is on."""
    if torch.device(device).type != 'cuda':
        return False
    torch.set_float32_matmul_precision('high' if enabled else 'highest')
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    return bool(enabled)
