"""The text of a render as float masks in [0, 1]: drawing (with letter spacing), curved baselines, and the masks
of borders, shadows and extrusion derived from it."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

LINE_REFERENCE = 'Hdgjpqy'  # spans ascenders and descenders, so every word of one size gets the same line box


@lru_cache(maxsize=1024)
def load_font(font_path: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached FreeType face at `size` px."""
    return ImageFont.truetype(font_path, size)


@lru_cache(maxsize=1024)
def line_extent(font_path: str, size: int) -> tuple[int, int]:
    """Top and bottom of a line with ascenders and descenders, relative to the drawing origin."""
    _, top, _, bottom = load_font(font_path, size).getbbox(LINE_REFERENCE)
    return top, bottom


def draw_text(text: str, font_path: str, size: int, spacing: float = 0.0) -> np.ndarray:
    """Float32 mask of `text` on its line box, 1 on ink; `spacing` adds that fraction of `size` between letters
    (negative tightens; 0 draws the string in one go, keeping the font's kerning)."""
    font = load_font(font_path, size)
    ref_top, ref_bottom = line_extent(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    line_top, line_bottom = min(top, ref_top), max(bottom, ref_bottom)
    if spacing == 0.0:
        xs, pieces, width = [0.0], [text], right
    else:
        xs, pieces, x = [], list(text), 0.0
        for ch in text:
            xs.append(x)
            x += font.getlength(ch) + spacing * size
        width = int(np.ceil(max(x - spacing * size, right)))
    pad = size // 4  # glyphs may overhang their advance (italics)
    canvas = Image.new('L', (max(1, width - min(left, 0) + 2 * pad), line_bottom - line_top), 0)
    draw = ImageDraw.Draw(canvas)
    for x, piece in zip(xs, pieces):
        draw.text((pad + x - min(left, 0), -line_top), piece, font=font, fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    cols = np.flatnonzero(mask.max(axis=0) > 0)
    return mask[:, cols[0]:cols[-1] + 1] if len(cols) else mask


def curve(mask: np.ndarray, bend: float, wave: bool = False) -> np.ndarray:
    """Bend the baseline: each column moves down by `bend` x its line height along an arc (or a sine wave);
    negative `bend` bends the other way. The mask grows vertically so nothing is cut."""
    h, w = mask.shape
    shift = bend * h
    t = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    offsets = shift * (np.sin(np.pi * t) if wave else t ** 2 - 0.5)
    top = int(np.ceil(max(0.0, -offsets.min())))
    out_h = h + top + int(np.ceil(max(0.0, offsets.max())))
    ys, xs = np.mgrid[0:out_h, 0:w].astype(np.float32)
    map_y = (ys - top - offsets[None, :]).astype(np.float32)
    return cv2.remap(mask, xs, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def border(mask: np.ndarray, width: int) -> np.ndarray:
    """The ring of a `width`-pixel outline around the strokes."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return np.clip(cv2.dilate(mask, kernel) - mask, 0.0, 1.0)


def shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The mask moved by (dx, dy) pixels, zeros entering."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(mask, matrix, (mask.shape[1], mask.shape[0]), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def shadow(mask: np.ndarray, dx: int, dy: int, blur: float) -> np.ndarray:
    """A drop shadow: the mask moved by (dx, dy) and blurred by sigma `blur`, minus the strokes themselves."""
    moved = shifted(mask, dx, dy)
    if blur > 0:
        moved = cv2.GaussianBlur(moved, (0, 0), blur)
    return np.clip(moved - mask, 0.0, 1.0)


def extrusion(mask: np.ndarray, dx: int, dy: int, depth: int) -> np.ndarray:
    """A 3-D extrusion: the strokes repeated `depth` times one pixel further along (dx, dy) each, behind them."""
    body = np.zeros_like(mask)
    for k in range(1, depth + 1):
        body = np.maximum(body, shifted(mask, dx * k, dy * k))
    return np.clip(body - mask, 0.0, 1.0)
