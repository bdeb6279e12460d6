"""One scene-like word render: a text layer with effects over a textured surface, seen through a camera.

`SceneStyle` holds each feature's probability (0 switches it off); `SceneRenderer.render` composes a word from a
font, the surfaces it was given and an explicit random generator, so a render is a function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import cv2
import numpy as np

from tools.synth import degrade, text_layer
from tools.synth.textures import LUMA, random_crop

MIN_CONTRAST = 24  # luminance levels (0..255) between text and the surface under it; real crops go this low
MIN_ASPECT = 0.4  # narrowest crop, as a fraction of its height


@dataclass(frozen=True)
class SceneStyle:
    """Probability of each feature per render."""

    photo_texture: float = 0.45   # surface cut from a photograph or paper texture (else a real crop or colours)
    real_texture: float = 0.15    # surface cut from a real training crop (when crops are given)
    gradient: float = 0.5         # a colour surface is a gradient (else plain)
    real_colours: float = 0.6     # text / surface colours from a real crop's two main colours (else random)
    spacing: float = 0.2          # letter spacing from -5 % to +35 % of the font size
    curve: float = 0.12           # baseline bent along an arc or a wave
    border: float = 0.12          # outline in a contrasting colour
    shadow: float = 0.12          # drop shadow
    extrusion: float = 0.05       # 3-D extrusion behind the strokes
    translucent: float = 0.25     # text drawn at 60-95 % opacity, the surface showing through
    rotation: float = 0.3         # rotated up to 10 degrees (rarely 30)
    perspective: float = 0.3      # projective warp: the word seen at an angle
    lighting: float = 0.2         # uneven light across the word
    defocus: float = 0.12         # out-of-focus disc blur
    motion_blur: float = 0.12     # blur along a line
    low_resolution: float = 0.2   # shrunk 1.5-3.5x and enlarged back
    noise: float = 0.3            # Gaussian sensor noise
    jpeg: float = 0.3             # JPEG compression at quality 15-85

    @classmethod
    def parse(cls, overrides: Sequence[str]) -> 'SceneStyle':
        """The default style with `name=probability` overrides; an unknown name or a value outside [0, 1] raises
        ValueError naming it."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for item in overrides:
            name, _, value = item.partition('=')
            if name not in known:
                raise ValueError(f'unknown render feature {name!r} (known: {", ".join(sorted(known))})')
            try:
                p = float(value)
            except ValueError:
                raise ValueError(f'render feature {name}: {value!r} is not a number') from None
            if not 0.0 <= p <= 1.0:
                raise ValueError(f'render feature {name}: probability {p} is outside [0, 1]')
            values[name] = p
        return cls(**values)


def _luma(colour: np.ndarray) -> float:
    return float(np.asarray(colour, np.float32) @ LUMA)


def _contrasting(colour: np.ndarray, surface_luma: float, rng: np.random.Generator) -> np.ndarray:
    """`colour` when it stands at least MIN_CONTRAST levels from the surface, else a dark or light one that does."""
    if abs(_luma(colour) - surface_luma) >= MIN_CONTRAST:
        return colour
    target = rng.uniform(0, max(surface_luma - 60, 1)) if surface_luma > 127 else rng.uniform(
        min(surface_luma + 60, 254), 255)
    return np.clip(colour - _luma(colour) + target, 0, 255).astype(np.float32)


class SceneRenderer:
    """Composes scene-like word images from fonts, surfaces (`textures`, `real_crops`) and colour pairs."""

    def __init__(self, style: SceneStyle = SceneStyle(), textures: Sequence[np.ndarray] = (),
                 real_crops: Sequence[np.ndarray] = (), colour_pairs: np.ndarray | None = None):
        self.style = style
        self.textures, self.real_crops = list(textures), list(real_crops)
        self.colour_pairs = colour_pairs if colour_pairs is not None else np.zeros((0, 2, 3), np.float32)

    def _hit(self, rng: np.random.Generator, feature: str) -> bool:
        return bool(rng.random() < getattr(self.style, feature))

    def _colours(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(text, surface) RGB float32 colours."""
        if len(self.colour_pairs) and self._hit(rng, 'real_colours'):
            pair = self.colour_pairs[rng.integers(len(self.colour_pairs))]
            jitter = rng.normal(0, 10, (2, 3))
            text, surface = np.clip(pair + jitter, 0, 255).astype(np.float32)
            return text, surface
        surface = rng.integers(0, 256, 3).astype(np.float32)
        return rng.integers(0, 256, 3).astype(np.float32), surface

    def _surface(self, rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
        """An h x w x 3 float32 background."""
        if self.textures and self._hit(rng, 'photo_texture'):
            return random_crop(self.textures[rng.integers(len(self.textures))], h, w, rng)
        if self.real_crops and self._hit(rng, 'real_texture'):
            return random_crop(self.real_crops[rng.integers(len(self.real_crops))], h, w, rng)
        if not self._hit(rng, 'gradient'):
            return np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
        other = np.clip(colour + rng.integers(-80, 81, 3), 0, 255).astype(np.float32)
        ramp = ((1.0 + degrade.linear_ramp(h, w, rng.uniform(0, 360))) / 2.0)[..., None]
        return colour + ramp * (other - colour)

    def _text_mask(self, text: str, font_path: str, rng: np.random.Generator) -> np.ndarray:
        size = int(rng.integers(40, 97))  # drawn large, downscaled at the end
        spacing = float(rng.uniform(-0.05, 0.35)) if self._hit(rng, 'spacing') else 0.0
        mask = text_layer.draw_text(text, font_path, size, spacing)
        width = max(1, round(mask.shape[1] * rng.uniform(0.7, 1.35)))
        mask = cv2.resize(mask, (width, mask.shape[0]), interpolation=cv2.INTER_LINEAR)
        if self._hit(rng, 'curve'):
            mask = text_layer.curve(mask, rng.uniform(0.15, 0.5) * rng.choice((-1, 1)), wave=rng.random() < 0.3)
        pad = int(0.6 * mask.shape[0])  # room for effects and geometry
        return cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0.0)

    def _layers(self, mask: np.ndarray, text_colour: np.ndarray, surface_luma: float,
                rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """(mask, colour, opacity) from the back to the front."""
        line = mask.shape[0] / 2.2  # about the text's height
        layers = []
        if self._hit(rng, 'shadow'):
            d = max(1, round(line * rng.uniform(0.03, 0.1)))
            sx, sy = rng.choice((-1, 1)), rng.choice((-1, 1))
            layers.append((text_layer.shadow(mask, sx * d, sy * d, line * rng.uniform(0, 0.06)),
                           np.full(3, rng.uniform(0, 60), np.float32), rng.uniform(0.4, 0.9)))
        if self._hit(rng, 'extrusion'):
            dx, dy = int(rng.choice((-1, 1))), int(rng.choice((-1, 1)))
            depth = max(1, round(line * rng.uniform(0.03, 0.12)))
            layers.append((text_layer.extrusion(mask, dx, dy, depth), text_colour * rng.uniform(0.3, 0.7), 1.0))
        if self._hit(rng, 'border'):
            width = max(1, round(line * rng.uniform(0.03, 0.1)))
            edge = _contrasting(rng.integers(0, 256, 3).astype(np.float32), _luma(text_colour), rng)
            layers.append((text_layer.border(mask, width), edge, 1.0))
        opacity = rng.uniform(0.6, 0.95) if self._hit(rng, 'translucent') else 1.0
        layers.append((mask, _contrasting(text_colour, surface_luma, rng), opacity))
        return layers

    def _geometry(self, img: np.ndarray, ink: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rotation and perspective about the ink's box, applied to the image and the ink alike."""
        rotate, tilt = self._hit(rng, 'rotation'), self._hit(rng, 'perspective')
        if not (rotate or tilt):
            return img, ink
        ys, xs = np.nonzero(ink > 0.05)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        box = np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        moved = box.copy()
        if tilt:
            moved += rng.uniform(-0.3, 0.3, (4, 2)).astype(np.float32) * (y1 - y0 + 1)
        if rotate:
            angle = rng.uniform(-10, 10) if rng.random() < 0.85 else rng.uniform(-30, 30)
            centre = moved.mean(axis=0)
            rotation = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
            moved = np.concatenate([moved, np.ones((4, 1), np.float32)], axis=1) @ rotation.T.astype(np.float32)
        matrix = cv2.getPerspectiveTransform(box, moved.astype(np.float32))
        size = (img.shape[1], img.shape[0])
        img = cv2.warpPerspective(img, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        ink = cv2.warpPerspective(ink, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return img, ink

    def _crop(self, img: np.ndarray, ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The ink's box with random margins (a detector's loose or tight box)."""
        ys, xs = np.nonzero(ink > 0.05)
        if len(xs) == 0:
            return img
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        h = y1 - y0
        top, bottom = (rng.uniform(-0.04, 0.25, 2) * h).round().astype(int)
        left, right = (rng.uniform(-0.02, 0.35, 2) * h).round().astype(int)
        y0, y1 = max(0, y0 - top), min(img.shape[0], y1 + bottom)
        x0, x1 = max(0, x0 - left), min(img.shape[1], x1 + right)
        short = int(np.ceil(MIN_ASPECT * (y1 - y0))) - (x1 - x0)
        if short > 0:  # a lone narrow glyph (1, l, i): widen, or the data loader drops a crop a few pixels wide
            x0, x1 = max(0, x0 - (short + 1) // 2), min(img.shape[1], x1 + (short + 1) // 2)
        return img[y0:y1, x0:x1]

    def _camera(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Light, blur, low resolution, noise and JPEG at the output size."""
        if self._hit(rng, 'lighting'):
            img = degrade.lighting(img, rng.uniform(0.1, 0.5), rng.uniform(0, 360))
        if self._hit(rng, 'defocus'):
            img = degrade.defocus_blur(img, rng.uniform(0.8, 2.0))
        if self._hit(rng, 'motion_blur'):
            img = degrade.motion_blur(img, int(rng.integers(3, 8)), rng.uniform(0, 180))
        if self._hit(rng, 'low_resolution'):
            img = degrade.low_resolution(img, rng.uniform(1.5, 3.5), rng)
        if self._hit(rng, 'noise'):
            img = degrade.gaussian_noise(img, rng.uniform(2, 12), rng)
        img = np.clip(img, 0, 255)
        if self._hit(rng, 'jpeg'):
            img = degrade.jpeg(img, int(rng.integers(15, 86)))
        return img

    def render(self, text: str, font_path: str, rng: np.random.Generator, height: int = 32) -> np.ndarray:
        """`text` as an H x W x 3 uint8 RGB image of `height` rows (W follows the text)."""
        mask = self._text_mask(text, font_path, rng)
        h, w = mask.shape
        text_colour, surface_colour = self._colours(rng)
        surface = self._surface(rng, h, w, surface_colour)
        ink_rows = mask.max(axis=1) > 0.05
        surface_luma = float((surface[ink_rows] @ LUMA).mean()) if ink_rows.any() else _luma(surface_colour)
        img, ink = surface, np.zeros_like(mask)
        for layer, colour, opacity in self._layers(mask, text_colour, surface_luma, rng):
            alpha = (opacity * layer)[..., None]
            img = img * (1.0 - alpha) + colour * alpha
            ink = np.maximum(ink, layer)
        img, ink = self._geometry(img, ink, rng)
        img = self._crop(img, ink, rng)
        width = max(1, round(img.shape[1] * height / img.shape[0]))
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        return np.rint(self._camera(img, rng)).astype(np.uint8)
