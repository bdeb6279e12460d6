"""Pictures of inputs and attention maps for the test phase, the demo and TensorBoard."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from utils import IMAGENET_MEAN, IMAGENET_STD


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
