"""The plain render style: one font over a plain, gradient or noise background with enough contrast."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from tools.synth.text_layer import line_extent, load_font

MIN_CONTRAST = 90  # minimum luminance difference (0..255) between text and background
LUMA = np.array([0.299, 0.587, 0.114])


def _text_colour(rng: np.random.Generator, backgrounds: Sequence[np.ndarray]) -> np.ndarray:
    """A text colour whose luminance differs from every background colour by at least MIN_CONTRAST."""
    candidates = rng.integers(0, 256, (32, 3)).astype(np.float32)
    bg_luma = np.array([float(bg @ LUMA) for bg in backgrounds])
    contrast = np.abs((candidates @ LUMA)[:, None] - bg_luma[None, :]).min(axis=1)
    good = np.flatnonzero(contrast >= MIN_CONTRAST)
    if len(good):
        return candidates[good[0]]
    return np.full(3, 0.0 if bg_luma.mean() > 127 else 255.0, dtype=np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A plain, gradient or noise background (float32 h x w x 3) and its reference colours."""
    base = rng.integers(0, 256, 3).astype(np.float32)
    kind = rng.choice(3, p=(0.4, 0.35, 0.25))
    if kind == 0:
        return np.broadcast_to(base, (h, w, 3)).copy(), [base]
    if kind == 1:
        other = np.clip(base + rng.integers(-70, 71, 3), 0, 255).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        return base + ramp[..., None] * (other - base), [base, other]
    noise = rng.normal(0.0, rng.uniform(8, 25), (h, w, 3)).astype(np.float32)
    if rng.random() < 0.5:
        noise = cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.8, 2.5)) * 2.0
    return np.clip(base + noise, 0, 255), [base]


def render_word(text: str, font_path: str, rng: np.random.Generator, height: int = 32) -> np.ndarray:
    """Render `text` as an H x W x 3 uint8 RGB word image (W follows the text); deterministic for a given rng."""
    size = int(rng.integers(height, int(1.6 * height) + 1))
    font = load_font(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    # The line box spans ascenders and descenders whatever the word holds, so the text size stays comparable
    # across words; font metrics are not used because math fonts (STIX) report very tall lines.
    ref_top, ref_bottom = line_extent(font_path, size)
    line_top, line_bottom = min(top, ref_top), max(bottom, ref_bottom)
    line_h = line_bottom - line_top
    mx = int(round(rng.uniform(0.05, 0.4) * line_h))
    my_top = int(round(rng.uniform(0.0, 0.3) * line_h))
    my_bottom = int(round(rng.uniform(0.0, 0.3) * line_h))
    canvas = Image.new('L', (right - left + 2 * mx, line_h + my_top + my_bottom), 0)
    ImageDraw.Draw(canvas).text((mx - left, my_top - line_top), text, font=font, fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0

    stretch = rng.uniform(0.8, 1.25)
    width = max(1, int(round(mask.shape[1] * height / mask.shape[0] * stretch)))
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)

    background, refs = _background(rng, height, width)
    colour = _text_colour(rng, refs)
    img = background * (1.0 - mask[..., None]) + colour * mask[..., None]

    if rng.random() < 0.3:
        angle = rng.uniform(-3, 3)
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        img = cv2.warpAffine(img, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    if rng.random() < 0.4:
        img = img + rng.normal(0.0, rng.uniform(2, 10), img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
