"""Surfaces for scene renders: crops of photographs and paper textures, and text / background colour pairs taken
from real word crops (as SynthText learnt its colour model from IIIT5k)."""

from __future__ import annotations

import glob
import os
from typing import Iterable, Sequence

import cv2
import numpy as np

from dataset import decode_image, open_lmdb

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp')
# Debian's background packages (tools/install_render_assets.sh) and the photographs the trdg wheel ships.
TEXTURE_DIRS = ('/usr/share/backgrounds', '/usr/share/mypaint/backgrounds', 'data/render_assets/images')
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    scale = max_side / max(img.shape[:2])
    if scale >= 1:
        return img
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def texture_files(dirs: Sequence[str] = TEXTURE_DIRS) -> list[str]:
    """Image files under `dirs` (recursively, sorted, so the list is the same on every run)."""
    files: list[str] = []
    for d in dirs:
        found = glob.glob(os.path.join(d, '**', '*'), recursive=True)
        files += sorted(f for f in found if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(f))
    return files


def load_textures(files: Iterable[str], max_side: int = 512) -> list[np.ndarray]:
    """RGB uint8 images, each shrunk to at most `max_side` pixels; unreadable or tiny files are skipped."""
    textures = []
    for path in files:
        with open(path, 'rb') as f:
            img = decode_image(f.read())
        if img is not None and min(img.shape[:2]) >= 16:
            textures.append(_shrink(img, max_side))
    return textures


def lmdb_images(path: str, limit: int | None = None, max_side: int = 256) -> list[np.ndarray]:
    """The images of an ABINet-layout LMDB (`image-%09d`, 1-based), at most `limit`, each at most `max_side`."""
    env = open_lmdb(path)
    with env.begin() as txn:
        count = int(txn.get(b'num-samples'))
        images = []
        for i in range(1, (count if limit is None else min(count, limit)) + 1):
            img = decode_image(txn.get(f'image-{i:09d}'.encode()))
            if img is not None and min(img.shape[:2]) >= 8:
                images.append(_shrink(img, max_side))
    return images


def colour_pair(img: np.ndarray, iterations: int = 8) -> np.ndarray:
    """[text, background] RGB float32 colours of a word crop: two means over its pixels' luminance, the smaller
    cluster being the text (strokes cover less of a crop than the background does)."""
    pixels = img.reshape(-1, 3).astype(np.float32)
    luma = pixels @ LUMA
    lo, hi = float(luma.min()), float(luma.max())
    if hi - lo < 1:
        return np.stack([pixels.mean(0), pixels.mean(0)])
    for _ in range(iterations):
        dark = np.abs(luma - lo) < np.abs(luma - hi)
        lo, hi = float(luma[dark].mean()), float(luma[~dark].mean()) if (~dark).any() else hi
    dark = np.abs(luma - lo) < np.abs(luma - hi)
    dark_colour, light_colour = pixels[dark].mean(0), pixels[~dark].mean(0)
    return np.stack([dark_colour, light_colour] if dark.mean() < 0.5 else [light_colour, dark_colour])


def colour_pairs(images: Iterable[np.ndarray]) -> np.ndarray:
    """N x 2 x 3 float32 [text, background] colours, one pair per image."""
    pairs = [colour_pair(img) for img in images]
    return np.stack(pairs) if pairs else np.zeros((0, 2, 3), np.float32)


def random_crop(texture: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An h x w float32 patch of `texture` at a random place and scale, flipped at random."""
    th, tw = texture.shape[:2]
    aspect = w / h
    largest = min(th, tw / aspect)  # the tallest crop of this aspect that fits
    ch = max(min(largest, 4.0), rng.uniform(0.15, 1.0) * largest)
    cw = min(tw, max(1, round(ch * aspect)))
    ch = min(th, max(1, round(ch)))
    y, x = int(rng.integers(th - ch + 1)), int(rng.integers(tw - cw + 1))
    patch = texture[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return cv2.resize(np.ascontiguousarray(patch), (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
