"""Camera and compression damage on H x W x 3 float32 images in 0..255: blur, noise, low resolution, JPEG."""

from __future__ import annotations

import cv2
import numpy as np


def motion_blur(img: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Blur along a line of `length` pixels at `angle` degrees (a moving camera)."""
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length), flags=cv2.INTER_LINEAR)
    return cv2.filter2D(img, -1, kernel / max(float(kernel.sum()), 1e-6), borderType=cv2.BORDER_REFLECT)


def defocus_blur(img: np.ndarray, radius: float) -> np.ndarray:
    """Blur with a disc of `radius` pixels (an out-of-focus lens)."""
    r = max(1, int(np.ceil(radius)))
    ys, xs = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = (xs ** 2 + ys ** 2 <= radius ** 2 + 0.5).astype(np.float32)
    return cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def low_resolution(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Shrink by `factor` (> 1) and enlarge back, each with a random interpolation (a distant, small word)."""
    h, w = img.shape[:2]
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    modes = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC)
    img = cv2.resize(img, small, interpolation=modes[rng.integers(len(modes))])
    return cv2.resize(img, (w, h), interpolation=modes[rng.integers(1, 4) if rng.random() < 0.8 else 0])


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Round trip through JPEG at `quality` (1-100)."""
    data = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode('.jpg', data, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32)


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add per-pixel Gaussian noise of standard deviation `sigma` (sensor noise)."""
    return img + rng.normal(0.0, sigma, img.shape).astype(np.float32)


def linear_ramp(h: int, w: int, angle: float) -> np.ndarray:
    """An h x w float32 ramp from -1 to 1 along `angle` degrees."""
    a = np.deg2rad(angle)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = xs * np.cos(a) + ys * np.sin(a)
    return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6) * 2.0 - 1.0


def lighting(img: np.ndarray, strength: float, angle: float) -> np.ndarray:
    """Multiply by a linear light ramp from 1 - strength to 1 + strength along `angle` degrees (uneven light)."""
    return img * (1.0 + strength * linear_ramp(img.shape[0], img.shape[1], angle))[..., None]
