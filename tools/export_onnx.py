"""Export the inference model (BaseVision) to ONNX with a dynamic batch axis, and check it with onnxruntime.

    python -m tools.export_onnx --config configs/conclr_pretrain_vision_model.yaml --checkpoint best.pth \
        --output conclr_vision.onnx --check

Input `images` (N x 3 x H x W, ImageNet-normalised RGB); outputs `logits` (N x T x C), `attn_scores`
(N x T x H/4 x W/4) and `pt_lengths` (N, int64). A ConCLR checkpoint loads with its projection head dropped.
The export itself lives in inference/onnx_export.py (demo.py and the test phase export through it too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from configuration import Config, ConfigError
from inference.loading import InferenceError, load_inference_model
from inference.onnx_export import EXPORT_BATCH, INPUT_NAME, OUTPUT_NAMES, OnnxVision, export_onnx
from runtime.checkpoint import CheckpointError

CHECK_BATCH = 3  # differs from EXPORT_BATCH, so the check also proves the batch axis is dynamic
# --check fails when an output's max abs difference exceeds this fraction of that output's largest PyTorch value
# (float32 arithmetic in another order differs by about 1e-7 relative; a wrongly exported op by far more)
TOLERANCE = 1e-4


def run_onnx(path: str | Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The ONNX model's outputs by name for a float32 N x 3 x H x W batch (onnxruntime, CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT_NAME: images.astype(np.float32)})))


@torch.no_grad()
def compare_onnx(model: nn.Module, path: str | Path, image_size: tuple[int, int], batch_size: int = CHECK_BATCH,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """Per output, on a random batch: (max absolute difference between PyTorch and onnxruntime, max absolute
    PyTorch value)."""
    images = torch.randn(batch_size, 3, *image_size, generator=torch.Generator().manual_seed(seed))
    reference = OnnxVision(model).eval()(images)
    outputs = run_onnx(path, images.numpy())
    compared = {}
    for name, ref in zip(OUTPUT_NAMES, reference):
        got = outputs[name]
        if got.shape != tuple(ref.shape):
            raise ValueError(f'ONNX output {name} has shape {got.shape}, PyTorch {tuple(ref.shape)}')
        ref64 = ref.double().numpy()
        compared[name] = (float(np.abs(got.astype(np.float64) - ref64).max()), float(np.abs(ref64).max()))
    return compared


def check_onnx(model: nn.Module, path: str | Path, image_size: tuple[int, int], batch_size: int = CHECK_BATCH,
               seed: int = 0) -> dict[str, float]:
    """Max absolute difference of each output between PyTorch and onnxruntime on a random batch."""
    return {name: diff for name, (diff, _) in compare_onnx(model, path, image_size, batch_size, seed).items()}


def relative_differences(compared: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Each output's max absolute difference over its largest absolute PyTorch value (the difference itself when
    that value is 0)."""
    return {name: diff / scale if scale > 0 else diff for name, (diff, scale) in compared.items()}


def check_line(compared: dict[str, tuple[float, float]], tolerance: float) -> tuple[bool, str]:
    """Whether every output is within `tolerance` (relative), and the line that says so."""
    relative = relative_differences(compared)
    worst = max(relative, key=relative.get)
    ok = relative[worst] <= tolerance
    line = (f'max abs difference to PyTorch (batch of {CHECK_BATCH}): '
            + ', '.join(f'{name} {diff:.3g}' for name, (diff, _) in compared.items())
            + f'; largest relative {relative[worst]:.3g} ({worst}), tolerance {tolerance:g}: '
            + ('OK' if ok else 'FAILED'))
    return ok, line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', required=True, help='config the checkpoint was trained with')
    parser.add_argument('--checkpoint', required=True, help='ABINet-Vision, BaseVision or ConCLR checkpoint')
    parser.add_argument('--output', required=True, help='.onnx file to write')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset version')
    parser.add_argument('--check', action='store_true', help=f'compare with PyTorch in onnxruntime on a random '
                        f'batch of {CHECK_BATCH} (exported with {EXPORT_BATCH}); exit status 1 when an output differs '
                        'by more than --tolerance')
    parser.add_argument('--tolerance', type=float, default=TOLERANCE, help='largest allowed max abs difference of '
                        "an output, as a fraction of that output's largest PyTorch value (default %(default)g)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one `error:` line on stderr and exit status 2, a failed --check with
    exit status 1."""
    args = parse_args(argv)
    try:
        config = Config(args.config)
        model = load_inference_model(config, args.checkpoint)
        size = (config.dataset_image_height, config.dataset_image_width)
        path = export_onnx(model, args.output, size, args.opset)
        print(f'wrote {path} (opset {args.opset}, input {INPUT_NAME} N x 3 x {size[0]} x {size[1]}, outputs '
              f'{", ".join(OUTPUT_NAMES)})')
        if args.check:
            ok, line = check_line(compare_onnx(model, path, size), args.tolerance)
            print(line)
            if not ok:
                print(f'error: {path} does not match PyTorch within the tolerance ({line.rsplit("; ", 1)[1]})',
                      file=sys.stderr)
                return 1
    except (InferenceError, ConfigError, CheckpointError, OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
