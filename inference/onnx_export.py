"""Writing the inference model (BaseVision) as an ONNX graph with a dynamic batch axis.

Input `images` (N x 3 x H x W, ImageNet-normalised RGB); outputs `logits` (N x T x C), `attn_scores`
(N x T x H/4 x W/4) and `pt_lengths` (N, int64). H and W are fixed: the positional encodings and the position
attention are sized for them, so only the batch axis is dynamic. Uses torch's TorchScript-based exporter
(`dynamo=False`), which needs no extra package.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

INPUT_NAME = 'images'
OUTPUT_NAMES = ('logits', 'attn_scores', 'pt_lengths')
EXPORT_BATCH = 2
DEFAULT_OPSET = 17


class OnnxVision(nn.Module):
    """BaseVision's output dict as the tuple (logits, attn_scores, pt_lengths) an ONNX graph can return."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images -> (logits, attn_scores, pt_lengths)."""
        out = self.model(images)
        return out['logits'], out['attn_scores'], out['pt_lengths']


@contextmanager
def no_mha_fastpath() -> Iterator[None]:
    """Trace the plain nn.MultiheadAttention path, not the fused inference kernel."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def export_onnx(model: nn.Module, output: str | Path, image_size: tuple[int, int], opset: int = DEFAULT_OPSET,
                batch_size: int = EXPORT_BATCH) -> Path:
    """Write `model` (a BaseVision, in eval mode) as ONNX with a dynamic batch axis; image_size is (H, W)."""
    import onnx

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    wrapper = OnnxVision(model).eval()
    example = torch.randn(batch_size, 3, *image_size)
    dynamic = {name: {0: 'batch'} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    try:
        with no_mha_fastpath(), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*legacy TorchScript-based ONNX export.*')
            # nn.MultiheadAttention's checks of embedding sizes trace as constants; they do not involve the batch
            warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
            torch.onnx.export(wrapper, (example,), str(output), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic,
                              do_constant_folding=True)
    finally:
        model.train(training)
    onnx.checker.check_model(str(output))
    return output
