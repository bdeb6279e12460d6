"""ABINet's training augmentation (geometry, deterioration, colour jitter) on H x W x 3 uint8 arrays.

Every random choice comes from an explicit `np.random.Generator`, and every choice (which geometric
op, the deterioration strengths) is drawn per call; upstream ABINet fixed some of them per dataset object.
"""

from __future__ import annotations

import cv2
import numpy as np

INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)


def sample_sym(rng: np.random.Generator, magnitude: float, size: int | None = None) -> float | np.ndarray:
    """Symmetric magnitude in [-magnitude, magnitude], Beta(4, 4)-shaped (concentrated near 0)."""
    return (rng.beta(4, 4, size=size) - 0.5) * 2 * magnitude


def sample_asym(rng: np.random.Generator, magnitude: float, size: int | None = None) -> float | np.ndarray:
    """Asymmetric magnitude in [0, magnitude], Beta(1, 4)-shaped (mostly small)."""
    return rng.beta(1, 4, size=size) * magnitude


def _random_interpolation(rng: np.random.Generator) -> int:
    return INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))]


def _warp_affine_fit(img: np.ndarray, matrix: np.ndarray, interpolation: int) -> np.ndarray:
    """Apply a 2x3 affine map, growing the canvas so the whole transformed image fits; borders replicated."""
    h, w = img.shape[:2]
    # Pixel centres sit on integer coordinates, so the image covers [-0.5, w - 0.5] x [-0.5, h - 0.5].
    corners = np.array([[-0.5, -0.5, 1], [w - 0.5, -0.5, 1], [w - 0.5, h - 0.5, 1], [-0.5, h - 0.5, 1]])
    moved = corners @ matrix.T
    x0, y0 = moved.min(axis=0)
    x1, y1 = moved.max(axis=0)
    matrix = matrix.copy()
    matrix[:, 2] -= (x0 + 0.5, y0 + 0.5)
    size = (max(1, int(np.ceil(x1 - x0 - 1e-6))), max(1, int(np.ceil(y1 - y0 - 1e-6))))
    return cv2.warpAffine(img, matrix, size, flags=interpolation, borderMode=cv2.BORDER_REPLICATE)


def affine_matrix(w: int, h: int, angle: float = 0.0, scale: float = 1.0, shear: tuple[float, float] = (0.0, 0.0),
                  translate: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """2x3 map about the image centre: rotate `angle` deg (counter-clockwise), shear (x, y) deg, scale, translate."""
    cx, cy = (w - 1) / 2, (h - 1) / 2  # centre in pixel-centre coordinates, as cv2.getRotationMatrix2D expects
    a = np.deg2rad(angle)
    rotation = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # image y axis points down
    shear_m = np.array([[1.0, np.tan(np.deg2rad(shear[0]))], [np.tan(np.deg2rad(shear[1])), 1.0]])
    linear = scale * rotation @ shear_m
    centre = np.array([cx, cy])
    offset = centre + np.asarray(translate) - linear @ centre
    return np.concatenate([linear, offset[:, None]], axis=1)


def random_rotation(img: np.ndarray, rng: np.random.Generator, degrees: float = 45) -> np.ndarray:
    """Rotate by a symmetric random angle up to `degrees`, keeping the whole image (canvas grows)."""
    h, w = img.shape[:2]
    angle = sample_sym(rng, degrees)
    return _warp_affine_fit(img, affine_matrix(w, h, angle=angle), _random_interpolation(rng))


def random_affine(img: np.ndarray, rng: np.random.Generator, degrees: float = 45,
                  scale: tuple[float, float] = (0.5, 2.0), shear: tuple[float, float] = (45, 15),
                  translate: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Random rotation, scale in `scale`, x/y shear up to `shear` deg and translation (fraction of size)."""
    h, w = img.shape[:2]
    angle = sample_sym(rng, degrees)
    factor = rng.uniform(scale[0], scale[1])
    shear_xy = (sample_sym(rng, shear[0]), sample_sym(rng, shear[1]))
    shift = (sample_sym(rng, translate[0] * w), sample_sym(rng, translate[1] * h))
    matrix = affine_matrix(w, h, angle=angle, scale=factor, shear=shear_xy, translate=shift)
    return _warp_affine_fit(img, matrix, _random_interpolation(rng))


def random_perspective(img: np.ndarray, rng: np.random.Generator, distortion: float = 0.5) -> np.ndarray:
    """Move each corner inwards by up to `distortion` x half the size; output is the new quadrilateral's box."""
    h, w = img.shape[:2]
    dx = sample_asym(rng, distortion * w / 2, size=4)
    dy = sample_asym(rng, distortion * h / 2, size=4)
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    dst = np.array([[dx[0], dy[0]], [w - 1 - dx[1], dy[1]], [w - 1 - dx[2], h - 1 - dy[2]],
                    [dx[3], h - 1 - dy[3]]], dtype=np.float32)
    x0, y0 = dst.min(axis=0)
    x1, y1 = dst.max(axis=0)
    dst -= (x0, y0)
    matrix = cv2.getPerspectiveTransform(src, dst)
    size = (max(1, int(round(x1 - x0)) + 1), max(1, int(round(y1 - y0)) + 1))
    return cv2.warpPerspective(img, matrix, size, flags=_random_interpolation(rng), borderMode=cv2.BORDER_REPLICATE)


def random_geometry(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of rotation, affine or perspective, chosen uniformly per call (images under 4 px pass unchanged)."""
    if min(img.shape[:2]) < 4:
        return img
    op = (random_rotation, random_affine, random_perspective)[rng.integers(3)]
    return op(img, rng)


def gaussian_noise(img: np.ndarray, rng: np.random.Generator, var: float = 20) -> np.ndarray:
    """Add zero-mean Gaussian noise of a random integer variance in [1, `var`] (asymmetric sampling)."""
    variance = max(int(sample_asym(rng, var)), 1)
    noisy = img + rng.normal(0.0, np.sqrt(variance), size=img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def motion_kernel(size: int, angle: float) -> np.ndarray:
    """Line kernel of `size` px at `angle` deg, divided by its length `size` (size 1 is the identity).

    As upstream, it is divided by the length rather than by its sum: the rotated line's interpolated weights do not
    sum to exactly `size` at most angles (0.79 to 1.11 times it for sizes 2 to 6), so the blur also shifts brightness.
    """
    kernel = np.zeros((size, size), dtype=np.float32)
    kernel[size // 2, :] = 1.0
    centre = ((size - 1) / 2, (size - 1) / 2)
    kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D(centre, angle, 1.0), (size, size))
    return kernel / size


def motion_blur(img: np.ndarray, rng: np.random.Generator, degrees: int = 6) -> np.ndarray:
    """Blur along a random direction with a line kernel of random length up to `degrees` px; borders reflected."""
    size = max(1, int(sample_asym(rng, degrees)))
    angle = rng.uniform(-180, 180)
    if size == 1:
        return img
    # BORDER_DEFAULT (reflect-101: mirrored about the edge pixel) is cv2.filter2D's default, which upstream uses.
    return cv2.filter2D(img, -1, motion_kernel(size, angle), borderType=cv2.BORDER_DEFAULT)


RESCALE_BASE = (512, 128)  # width, height every image is resized to before the pyramid levels


def rescale(img: np.ndarray, rng: np.random.Generator, factor: int = 4) -> np.ndarray:
    """Lose detail: resize to 512 x 128, round(U(0, `factor`)) pyrDown levels, resize back (bilinear both ways)."""
    levels = round(rng.uniform(0, factor))
    if levels == 0:
        return img
    h, w = img.shape[:2]
    small = cv2.resize(img, RESCALE_BASE, interpolation=cv2.INTER_LINEAR)
    for _ in range(levels):
        small = cv2.pyrDown(small)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def random_deterioration(img: np.ndarray, rng: np.random.Generator, var: float = 20, degrees: int = 6,
                         factor: int = 4) -> np.ndarray:
    """Gaussian noise, motion blur and pyramid rescaling, in a random order, strengths drawn per call."""
    ops = [lambda x: gaussian_noise(x, rng, var), lambda x: motion_blur(x, rng, degrees),
           lambda x: rescale(x, rng, factor)]
    for i in rng.permutation(len(ops)):
        img = ops[i](img)
    return img


def _blend(img: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """factor * img + (1 - factor) * other, in float32 0..255 and clipped."""
    return np.clip(factor * img + (1.0 - factor) * other, 0, 255)


def _gray(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Scale intensities by `factor` (float32 RGB in, float32 out)."""
    return _blend(img, 0.0, factor)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean grey level (factor 0 = flat grey, 1 = unchanged)."""
    return _blend(img, float(_gray(img).mean()), factor)


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the greyscale image (factor 0 = grey, 1 = unchanged)."""
    return _blend(img, _gray(img)[..., None], factor)


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by `shift` turns (-0.5..0.5)."""
    hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(shift * 180))) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.5, contrast: float = 0.5,
                 saturation: float = 0.5, hue: float = 0.1) -> np.ndarray:
    """Random brightness/contrast/saturation factors in [1-x, 1+x] and hue shift in [-hue, hue], random order."""
    out = img.astype(np.float32)
    ops = [lambda x: adjust_brightness(x, rng.uniform(1 - brightness, 1 + brightness)),
           lambda x: adjust_contrast(x, rng.uniform(1 - contrast, 1 + contrast)),
           lambda x: adjust_saturation(x, rng.uniform(1 - saturation, 1 + saturation)),
           lambda x: adjust_hue(x, rng.uniform(-hue, hue))]
    for i in rng.permutation(len(ops)):
        out = ops[i](out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class TrainAugment:
    """ABINet training augmentation: geometry (p 0.5), deterioration (p 0.25), colour jitter (p 0.25), in order."""

    def __init__(self, geometry_p: float = 0.5, deterioration_p: float = 0.25, color_p: float = 0.25):
        self.geometry_p = geometry_p
        self.deterioration_p = deterioration_p
        self.color_p = color_p

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment an H x W x 3 uint8 image with randomness from `rng` only."""
        if rng.random() < self.geometry_p:
            img = random_geometry(img, rng)
        if rng.random() < self.deterioration_p:
            img = random_deterioration(img, rng)
        if rng.random() < self.color_p:
            img = color_jitter(img, rng)
        return np.ascontiguousarray(img)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(geometry_p={self.geometry_p}, deterioration_p={self.deterioration_p}, '
                f'color_p={self.color_p})')
