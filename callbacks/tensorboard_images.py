"""Evaluation images with the attention map of every predicted character, for TensorBoard."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from modules.decoding import decode_logits, onehot_texts
from utils import CharsetMapper
from visualization import add_caption, attention_maps, attention_picture, denormalize, hstack_padded

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
