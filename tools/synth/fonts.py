"""Fonts for rendering: found on the machine (and in extra folders), checked to draw every character of a label."""

from __future__ import annotations

import glob
import os
import string
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import ImageFont

ALPHANUMERIC = string.ascii_letters + string.digits
FONT_DIRS = ('/usr/share/fonts', '/usr/local/share/fonts', os.path.expanduser('~/.fonts'))


def _glyph_names_fit(font_path: str, chars: str) -> bool:
    """False when the font's glyph names show its [0-9a-zA-Z] code points hold other symbols (TeX cmsy, cmex)."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError:  # fontTools comes with matplotlib; without it rely on the rendering checks alone
        return True
    try:
        font = TTFont(font_path, lazy=True, fontNumber=0)
        cmap = font.getBestCmap() or {}
    except Exception:
        return False
    digit_names = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
    named = matched = 0
    for c in chars:
        name = cmap.get(ord(c))
        if name is None:
            return False
        if name.startswith(('glyph', 'gid', 'uni', 'u0', 'cid')):
            continue  # synthetic names say nothing about the shape
        named += 1
        expected = digit_names[int(c)] if c.isdigit() else c
        matched += name == expected or name.startswith((expected + '.', expected + '_')) or (
            c.isdigit() and name.startswith(expected))
    return named == 0 or matched >= named - 2


def font_renders(font_path: str, chars: str = ALPHANUMERIC) -> bool:
    """Whether a font draws every char in `chars` as visible, mostly distinct glyphs of letters and digits."""
    try:
        font = ImageFont.truetype(font_path, 24)
    except OSError:
        return False
    masks = set()
    for c in chars:
        mask = font.getmask(c)
        if mask.getbbox() is None:
            return False
        masks.add((mask.size, bytes(mask)))
    if len(masks) < len(chars) - 4:  # one fallback box for everything (LastResort) or many repeats
        return False
    return _glyph_names_fit(font_path, chars)


def _font_key(font_path: str) -> str:
    """Family and style of a font (to drop copies of one font), or its file name."""
    try:
        font = ImageFont.truetype(font_path, 12)
        family, style = font.getname()
        return f'{family}|{style}'
    except OSError:
        return os.path.basename(font_path)


def find_fonts(extra_dirs: Sequence[str] = ()) -> list[str]:
    """TTF/OTF fonts on this machine (matplotlib's bundled ones first) that render [0-9a-zA-Z]; one file per face."""
    return list(_find_fonts(tuple(extra_dirs)))


@lru_cache(maxsize=8)
def _find_fonts(extra_dirs: tuple[str, ...]) -> tuple[str, ...]:
    import matplotlib

    dirs = [os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'fonts', 'ttf'), *FONT_DIRS, *extra_dirs]
    candidates = []
    for d in dirs:
        found = glob.glob(os.path.join(d, '**', '*'), recursive=True)
        candidates += sorted(f for f in found if f.lower().endswith(('.ttf', '.otf')) and os.path.isfile(f))
    fonts, seen = [], set()
    for path in candidates:
        key = _font_key(path)
        if key in seen or not font_renders(path):
            continue
        seen.add(key)
        fonts.append(path)
    return tuple(fonts)


@lru_cache(maxsize=1024)
def _code_points(font_path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    try:
        return frozenset((TTFont(font_path, lazy=True, fontNumber=0).getBestCmap() or {}).keys())
    except Exception:
        return frozenset()


def font_covers(font_path: str, text: str) -> bool:
    """Whether the font maps every character of `text` to a glyph of its own (no fallback boxes)."""
    points = _code_points(font_path)
    return all(ord(c) in points for c in text)


def pick_font(text: str, fonts: Sequence[str], rng: np.random.Generator) -> int:
    """Index of a random font that covers `text`: one draw, and a second among the covering fonts only when the
    first lacks a character (so vocabularies every font covers render as before). ValueError when none does."""
    index = int(rng.integers(len(fonts)))
    if font_covers(fonts[index], text):
        return index
    covering = [i for i, f in enumerate(fonts) if font_covers(f, text)]
    if not covering:
        raise ValueError(f'no font has every character of {text!r}')
    return covering[rng.integers(len(covering))]


def text_alphabet(words: Sequence[str]) -> str:
    """Every character the renders of `words` can hold: their own, and the upper-case ones apply_case draws (a
    corpus's random strings and numbers are letters and digits, which its words' letters and 0-9 stand for)."""
    chars = set(''.join(words))
    chars |= {c.upper() for c in chars if len(c.upper()) == 1}
    return ''.join(sorted(chars))


def coverage_line(fonts: Sequence[str], alphabet: str, what: str) -> str:
    """'K of N fonts cover the whole vocabulary (M characters)': each render still only uses a font that has every
    character of its own label (pick_font)."""
    covering = sum(font_covers(f, alphabet) for f in fonts)
    line = f'{covering} of {len(fonts)} fonts cover the whole {what} ({len(alphabet)} characters)'
    if covering < len(fonts):
        line += '; the others draw only the labels whose characters they all have'
    return line
