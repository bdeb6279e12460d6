"""Recognise the word images of a folder (or a wildcard) with a trained vision model and draw its attention maps.

    python demo.py --config=configs/conclr_pretrain_vision_model.yaml --input=test/img/path [--checkpoint=best.pth]

prints `path<TAB>prediction<TAB>confidence` per image on stdout, notes, warnings and errors on stderr.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from configuration import Config, ConfigError
from dataset import decode_image, resize_keep_ratio, to_normalized_tensor
from inference.loading import InferenceError, load_inference_model, select_device
from inference.onnx_backend import BACKENDS, QUANTIZE, OnnxBackendError, OrtVision, onnx_model
from inference.pictures import attention_maps, attention_picture, save_rgb
from modules.decoding import decode_logits
from modules.model_vision import BaseVision
from runtime.checkpoint import CheckpointError, choose_checkpoint
from utils import CharsetMapper, tune_malloc

MODEL_EVALS = ('alignment', 'vision')
BATCH_SIZE = 64


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """ABINet's demo flags, plus --output and --batch_size."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', type=str, required=True, help='YAML config merged over configs/template.yaml')
    parser.add_argument('--input', type=str, required=True, help='a folder of images, or a wildcard pattern '
                        '(quote it: --input="imgs/*.jpg")')
    parser.add_argument('--checkpoint', type=str, default=None, help='ABINet-Vision, full ABINet, BaseVision or '
                        'ConCLR checkpoint (default: model.checkpoint of the config, else the run\'s best checkpoint '
                        '<global.workdir>/<global.name>/best-<global.name>.pth)')
    parser.add_argument('--cuda', type=int, nargs='?', const=0, default=-1,
                        help='GPU index (a bare --cuda means 0); -1 (the default) runs on the CPU')
    parser.add_argument('--model_eval', type=str, default='vision', choices=MODEL_EVALS,
                        help="model output to show; only 'vision' exists in this project")
    parser.add_argument('--image_only', action='store_true', help='print predictions only, no attention pictures')
    parser.add_argument('--output', type=str, default=None, help='folder of the attention pictures '
                        '(default <global.workdir>/<global.name>/demo)')
    parser.add_argument('--batch_size', type=int, default=BATCH_SIZE, help='images per forward pass')
    parser.add_argument('--backend', type=str, default='pytorch', choices=BACKENDS,
                        help='what runs the model: PyTorch, or ONNX Runtime on the CPU (the graph is exported once per '
                        'checkpoint and cached beside it)')
    parser.add_argument('--quantize', type=str, default=None, choices=QUANTIZE,
                        help='with --backend onnxruntime: int8 weights for the matrix products (dynamic quantisation)')
    return parser.parse_args(argv)


def note(message: str) -> None:
    """One informational line on stderr (translated config keys, which checkpoint and head were loaded)."""
    print(f'note: {message}', file=sys.stderr)


def checkpoint_paths(config: Config, checkpoint: str | None) -> list[str]:
    """Checkpoints to load in order, as main.py's test phase does: model.vision.checkpoint, then --checkpoint, else
    the run's best checkpoint `<global.workdir>/<global.name>/best-<global.name>.pth` when it exists, else
    model.checkpoint (one note says which and why)."""
    chosen, why = choose_checkpoint(checkpoint, config.model_checkpoint or None,
                                    config.workdir / f'best-{config.global_name}.pth')
    if not checkpoint:
        note(why)
    return [p for p in (config.model_vision_checkpoint, chosen) if p]


_ESCAPES = str.maketrans({'\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r'})


def shown_name(path: str) -> str:
    """A file name as printed: backslash, tab, newline and carriage return escaped (\\, \\t, \\n, \\r), so every
    `path<TAB>prediction<TAB>confidence` line stays one line of three fields."""
    return path.translate(_ESCAPES)


def find_files(pattern: str) -> list[str]:
    """Files of a folder (not recursive, hidden ones left out) sorted by name, or a wildcard's matches sorted."""
    if os.path.isdir(pattern):
        names = sorted(n for n in os.listdir(pattern) if not n.startswith('.'))
        files = [os.path.join(pattern, n) for n in names if os.path.isfile(os.path.join(pattern, n))]
        if not files:
            raise InferenceError(f'no file in folder {pattern}')
        return files
    files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not files:
        raise InferenceError(f'no file matches --input {pattern}')
    return files


def resized(image: np.ndarray, config: Config) -> np.ndarray:
    """The image at the model's input size, resized as the test set does (bilinear, or keep-ratio + pad)."""
    h, w = config.dataset_image_height, config.dataset_image_width
    if config.dataset_multiscales:
        return resize_keep_ratio(image, h, w)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def read_image(path: str) -> np.ndarray | None:
    """The file as H x W x 3 uint8 RGB, or None when it is unreadable, not an image or truncated."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return decode_image(data)


def readable_images(files: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(path, RGB image) of every decodable file; one warning line on stderr per file that is not."""
    for path in files:
        image = read_image(path)
        if image is None:
            print(f'warning: {shown_name(path)}: not an image or cannot be decoded; skipped', file=sys.stderr)
            continue
        yield path, image


def _batches(items: Iterator[tuple[str, np.ndarray]], size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def picture_name(path: str, used: set[str]) -> str:
    """`<stem>.png`, or `<stem>_<k>.png` when an earlier input already took that name."""
    stem = Path(path).stem
    name, k = f'{stem}.png', 1
    while name in used:
        name, k = f'{stem}_{k}.png', k + 1
    used.add(name)
    return name


@torch.no_grad()
def run_demo(model: BaseVision | OrtVision, config: Config, files: Sequence[str], charset: CharsetMapper,
             device: torch.device, output: Path | None, batch_size: int = BATCH_SIZE) -> list[tuple[str, str, float]]:
    """Recognise `files` in batches, print one line per readable image and, unless `output` is None, write
    its attention picture there; returns (path, prediction, confidence) per readable image."""
    model.eval()
    results: list[tuple[str, str, float]] = []
    used: set[str] = set()
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    for batch in _batches(readable_images(files), batch_size):
        small = [resized(image, config) for _, image in batch]
        images = torch.stack([to_normalized_tensor(img) for img in small]).to(device)
        out = model(images)
        texts, confidences, _ = decode_logits(out['logits'], charset)
        maps = attention_maps(out['attn_scores']) if output is not None else None  # one copy per batch
        for k, ((path, _), text, conf) in enumerate(zip(batch, texts, confidences)):
            print(f'{shown_name(path)}\t{text}\t{conf:.4f}', flush=True)
            results.append((path, text, conf))
            if maps is not None:
                picture = attention_picture(small[k], maps[k], text)
                save_rgb(output / picture_name(path, used), picture)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one `error:` line on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        if args.model_eval != 'vision':
            raise InferenceError(f"--model_eval {args.model_eval}: only 'vision' exists in this project (it holds the "
                            'ABINet vision model, not the language or alignment models)')
        if args.backend == 'onnxruntime' and args.cuda >= 0:
            raise InferenceError(f'--backend onnxruntime runs on the CPU; leave out --cuda {args.cuda}')
        if args.quantize and args.backend != 'onnxruntime':
            raise InferenceError(f'--quantize {args.quantize} needs --backend onnxruntime')
        if args.batch_size < 1:
            raise InferenceError(f'--batch_size must be positive, got {args.batch_size}')
        config = Config(args.config)
        for line in config.translations:
            note(line)
        if config.global_malloc_tune:
            tune_malloc()
        device = select_device(args.cuda)
        files = find_files(args.input)
        charset = CharsetMapper(config.dataset_charset_path, config.dataset_max_length)
        checkpoints = checkpoint_paths(config, args.checkpoint)
        model = load_inference_model(config, checkpoints, device, log=note)
        if args.backend == 'onnxruntime':
            model = onnx_model(model, config, checkpoints, args.quantize, log=note)
        output = None if args.image_only else Path(args.output) if args.output else config.workdir / 'demo'
        results = run_demo(model, config, files, charset, device, output, args.batch_size)
        if not results:
            raise InferenceError(f'no readable image among the {len(files)} file(s) of --input {args.input}')
        if output is not None:
            print(f'attention pictures of {len(results)} image(s) written to {output}', file=sys.stderr)
    except (InferenceError, ConfigError, CheckpointError, OnnxBackendError, OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
