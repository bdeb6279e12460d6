"""Memory layout on the GPU: the format (NCHW or channels-last) of the weights, of the inputs that meet them and
of optimiser state, and cuDNN's algorithm autotuning.

With `training.channels_last` on CUDA the convolution weights are stored channels-last; every 4-D tensor that
meets them (the input batch, the backbone's output that feeds the attention's key encoder) is made dense in the
same format, so cuDNN never converts layouts inside a convolution. On the CPU everything stays NCHW.
"""

from __future__ import annotations

import torch


def weights_memory_format(device: torch.device | str, channels_last: bool) -> torch.memory_format:
    """The format to store the model's weights in: channels-last only when asked for and on CUDA."""
    return torch.channels_last if channels_last and torch.device(device).type == 'cuda' else torch.contiguous_format


def enable_cudnn_autotune(device: torch.device | str) -> bool:
    """Let cuDNN time its convolution algorithms once per input shape (shapes are fixed here); CUDA only."""
    if torch.device(device).type != 'cuda':
        return False
    torch.backends.cudnn.benchmark = True
    return True


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor laid out channels-last (and not NCHW-contiguous), else contiguous_format."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def dense_like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`tensor` dense in `reference`'s memory format (itself when it already is)."""
    return tensor.contiguous(memory_format=memory_format_of(reference))


@torch.no_grad()
def align_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Lay every state tensor shaped like its parameter (Adam's moments) out like that parameter; the count moved.

    A checkpoint's optimiser state loads NCHW while channels-last weights want channels-last moments; mixed
    layouts send Adam down its slow per-tensor path on every step.
    """
    moved = 0
    for group in optimizer.param_groups:
        for param in group['params']:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
                    moved += 1
    return moved
