"""Pictures of inputs and attention maps for the test phase, the demo and TensorBoard (evaluation images)."""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from modules.decoding import decode_logits, onehot_texts
from utils import IMAGENET_MEAN, IMAGENET_STD, CharsetMapper


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised 3 x H x W tensor -> H x W x 3 uint8 RGB."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    rgb = (image.detach() * std + mean).clamp(0, 1).permute(1, 2, 0).contiguous().cpu().numpy()
    return (rgb * 255).round().astype(np.uint8)


def attention_maps(attn_scores: torch.Tensor) -> np.ndarray:
    """N x T x h x w attention scores as one float32 array on the host: one device copy for a whole batch."""
    return attn_scores.detach().float().cpu().numpy()


def attention_picture(image: np.ndarray, attn_scores: np.ndarray | torch.Tensor, text: str,
                      scale: int = 2) -> np.ndarray:
    """Input image on top, then one heat-map overlay per predicted character (and the end slot), labelled.

    image: H x W x 3 uint8 RGB; attn_scores: T x h x w of one sample, best a row of `attention_maps` (a tensor
    is copied to the host here, once); text: the decoded prediction.
    """
    if isinstance(attn_scores, torch.Tensor):
        attn_scores = attention_maps(attn_scores)
    h, w = image.shape[:2]
    big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    rows = [_label(big, text if text else '(empty)')]
    slots = min(len(text) + 1, attn_scores.shape[0])
    for t in range(slots):
        attn = attn_scores[t]
        attn = cv2.resize(attn / max(float(attn.max()), 1e-8), (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap((attn * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        overlay = (0.5 * big + 0.5 * heat).astype(np.uint8)
        rows.append(_label(overlay, text[t] if t < len(text) else '<end>'))
    return np.concatenate(rows, axis=0)


def _label(picture: np.ndarray, caption: str) -> np.ndarray:
    band = np.full((18, picture.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(band, caption, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, picture], axis=0)


def save_rgb(path: str, picture: np.ndarray) -> None:
    """Write an RGB uint8 picture as PNG (cv2 wants BGR)."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(picture[..., ::-1])):
        raise OSError(f'could not write picture {path}')


def add_caption(picture: np.ndarray, caption: str) -> np.ndarray:
    """The picture with a white band holding `caption` on top."""
    return _label(picture, caption)


def hstack_padded(pictures: list[np.ndarray], gap: int = 4, fill: int = 255) -> np.ndarray:
    """H x W x 3 pictures side by side, top-aligned, shorter ones padded below and `gap` columns between, in `fill`."""
    if not pictures:
        raise ValueError('no pictures to stack')
    height = max(p.shape[0] for p in pictures)
    columns = []
    for k, p in enumerate(pictures):
        if k:
            columns.append(np.full((height, gap, 3), fill, dtype=np.uint8))
        pad = np.full((height - p.shape[0], p.shape[1], 3), fill, dtype=np.uint8)
        columns.append(np.concatenate([p.astype(np.uint8), pad], axis=0))
    return np.concatenate(columns, axis=1)


TAG = 'eval/attention'


def attention_grid(images: torch.Tensor, attn_scores: torch.Tensor, texts: Sequence[str],
                   gts: Sequence[str] | None = None, max_images: int = 4) -> np.ndarray:
    """The first `max_images` samples side by side, each an `attention_picture` captioned `gt: <gt>` on top.

    images: N x 3 x H x W normalised; attn_scores: N x T x h x w; texts: predictions. Returns H x W x 3 uint8.
    """
    count = min(max_images, len(images))
    if count < 1:
        raise ValueError('attention_grid needs at least one image')
    images, maps = images[:count].detach().cpu(), attention_maps(attn_scores[:count])  # one copy each
    pictures = []
    for i in range(count):
        picture = attention_picture(denormalize(images[i]), maps[i], texts[i])
        if gts is not None:
            picture = add_caption(picture, f'gt: {gts[i]}')
        pictures.append(picture)
    return hstack_padded(pictures)


def _spread(length: int, count: int) -> list[int]:
    """`count` indices spread evenly over 0..length-1 (all of them when length <= count)."""
    if length <= count:
        return list(range(length))
    return sorted({int(round(k)) for k in np.linspace(0, length - 1, count)})


def _images_and_gts(data: Any, charset: CharsetMapper, max_images: int) -> tuple[torch.Tensor, list[str] | None]:
    """Images (and ground truths when known) from an image tensor, an (images, (onehot, lengths)) batch or a
    dataset of (image, (onehot, length)) items (evenly spread samples)."""
    if isinstance(data, torch.Tensor):
        return data[:max_images], None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, target = data
        onehot = target[0] if isinstance(target, (tuple, list)) else target
        return images[:max_images], onehot_texts(onehot[:max_images], charset)
    items = [data[i] for i in _spread(len(data), max_images)]
    images = torch.stack([image for image, _ in items])
    return images, onehot_texts(torch.stack([target[0] for _, target in items]), charset)


@torch.no_grad()
def log_eval_images(writer: Any, model: nn.Module, dataset_or_batch: Any, charset: CharsetMapper, step: int,
                    max_images: int = 4, tag: str = TAG) -> np.ndarray:
    """Run `model` on a few evaluation images and write their attention grid to TensorBoard as `tag`.

    dataset_or_batch: a dataset of (image, (onehot, length)) items, an (images, (onehot, lengths)) batch or an
    images tensor. The model's train/eval mode is restored afterwards. Returns the grid written.
    """
    images, gts = _images_and_gts(dataset_or_batch, charset, max_images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(images.contiguous().to(device))
    finally:
        model.train(was_training)
    if isinstance(out, (list, tuple)):
        out = out[0]
    texts, _, _ = decode_logits(out['logits'], charset)
    grid = attention_grid(images, out['attn_scores'], texts, gts, max_images)
    writer.add_image(tag, grid, step, dataformats='HWC')
    return grid
