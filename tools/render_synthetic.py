"""Render synthetic word images offline (fonts already on the machine, no downloads) into train/test LMDBs.

    python -m tools.render_synthetic --output data/synth --num_train 20000 --num_test 1000 --seed 0
    python -m tools.render_synthetic --output data/scene --style scene --real_crops ../shared/training/IIIT5k_train

writes `<output>/train` and `<output>/test` (the test split is new renders of the same text source). The plain
style draws a font on a plain, gradient or noise background; the scene style (tools/synth) composes text effects
over photographs and real crops, seen through perspective, blur, low resolution and JPEG.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import string
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataset import DatasetError
from tools.create_lmdb_dataset import write_lmdb
from tools.synth.corpus import Corpus, common_words
from tools.synth.scene import SceneRenderer, SceneStyle
from tools.synth.text_layer import line_extent, load_font
from tools.synth.textures import TEXTURE_DIRS, colour_pairs, lmdb_images, load_textures, texture_files

ALPHANUMERIC = string.ascii_letters + string.digits
FONT_DIRS = ('/usr/share/fonts', '/usr/local/share/fonts', os.path.expanduser('~/.fonts'))
MIN_CONTRAST = 90  # minimum luminance difference (0..255) between text and background
CHUNK = 256  # renders per work unit; each unit has its own seed, so output does not depend on --workers


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


@lru_cache(maxsize=1)
def _dictionary_words() -> tuple[str, ...]:
    from english_words import get_english_words_set

    return tuple(sorted(get_english_words_set(['web2'], lower=True, alpha=True)))


def make_vocabulary(n: int, min_len: int, max_len: int, rng: np.random.Generator, kind: str = 'words') -> list[str]:
    """`n` distinct lower-case English words, or random [a-z0-9] strings with the same length distribution."""
    pool = [w for w in _dictionary_words() if min_len <= len(w) <= max_len and w.isascii()]
    if kind == 'words':
        if n > len(pool):
            raise ValueError(f'only {len(pool)} dictionary words have {min_len}..{max_len} letters, asked for {n}')
        return sorted(pool[i] for i in rng.choice(len(pool), size=n, replace=False))
    if kind != 'random':
        raise ValueError(f"kind must be 'words' or 'random', got {kind!r}")
    alphabet = np.array(list(string.ascii_lowercase + string.digits))
    lengths = np.array([len(w) for w in pool])
    if n > sum(36 ** k for k in range(min_len, max_len + 1)):
        raise ValueError(f'cannot make {n} distinct strings of {min_len}..{max_len} characters')
    words: set[str] = set()
    while len(words) < n:
        length = int(lengths[rng.integers(len(lengths))])
        words.add(''.join(alphabet[rng.integers(len(alphabet), size=length)]))
    return sorted(words)


def apply_case(word: str, rng: np.random.Generator) -> str:
    """lower (p 0.5), Capitalised (p 0.25) or UPPER (p 0.25)."""
    style = rng.choice(3, p=(0.5, 0.25, 0.25))
    if style == 1:
        return word[:1].upper() + word[1:]
    return word.upper() if style == 2 else word


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


# Set in each worker by _init_worker (and in the main process when --workers is 1).
_VOCAB: list[str] = []
_FONTS: list[str] = []
_HEIGHT = 32
_SCENE: SceneRenderer | None = None
_CORPUS: Corpus | None = None


def _init_worker(vocab: list[str], fonts: list[str], height: int, scene: SceneRenderer | None = None,
                 corpus: Corpus | None = None) -> None:
    global _VOCAB, _FONTS, _HEIGHT, _SCENE, _CORPUS
    _VOCAB, _FONTS, _HEIGHT, _SCENE, _CORPUS = vocab, fonts, height, scene, corpus


def _render_chunk(job: tuple[int, int, int, int]) -> list[tuple[bytes, str, int]]:
    """Render one work unit: (seed, split id, chunk index, count) -> [(PNG bytes, label, font index)]."""
    seed, split_id, chunk, count = job
    rng = np.random.default_rng([seed, split_id, chunk])
    out = []
    for _ in range(count):
        text = _CORPUS.sample(rng) if _CORPUS is not None else apply_case(_VOCAB[rng.integers(len(_VOCAB))], rng)
        font_index = pick_font(text, _FONTS, rng)
        if _SCENE is not None:
            img = _SCENE.render(text, _FONTS[font_index], rng, _HEIGHT)
        else:
            img = render_word(text, _FONTS[font_index], rng, _HEIGHT)
        ok, png = cv2.imencode('.png', cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f'PNG encoding failed for {text!r}')
        out.append((png.tobytes(), text, font_index))
    return out


def _jobs(seed: int, split_id: int, total: int) -> list[tuple[int, int, int, int]]:
    return [(seed, split_id, k, min(CHUNK, total - start)) for k, start in enumerate(range(0, total, CHUNK))]


def render_split(output_dir: str | os.PathLike, num: int, seed: int, split_id: int, vocab: list[str],
                 fonts: list[str], height: int = 32, workers: int = 1, overwrite: bool = False,
                 scene: SceneRenderer | None = None, corpus: Corpus | None = None) -> Counter:
    """Render `num` words into an LMDB at `output_dir` (plain style, or `scene`'s; from `vocab`, or sampled from
    `corpus`); return how many images each font index drew."""
    used: Counter = Counter()

    def samples(chunks: Iterator[list[tuple[bytes, str, int]]]) -> Iterator[tuple[bytes, str]]:
        for chunk in chunks:
            for png, text, font_index in chunk:
                used[font_index] += 1
                yield png, text

    jobs = _jobs(seed, split_id, num)
    setup = (vocab, fonts, height, scene, corpus)
    if workers <= 1:
        _init_worker(*setup)
        write_lmdb(output_dir, samples(map(_render_chunk, jobs)), check_images=False, overwrite=overwrite)
    else:
        with multiprocessing.Pool(workers, initializer=_init_worker, initargs=setup) as pool:
            write_lmdb(output_dir, samples(pool.imap(_render_chunk, jobs)), check_images=False, overwrite=overwrite)
    return used


def read_vocab(path: str | os.PathLike) -> list[str]:
    """One word per line; blank lines skipped, duplicates dropped (first kept)."""
    with open(path, encoding='utf-8') as f:
        words = [line.strip() for line in f]
    return list(dict.fromkeys(w for w in words if w))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--output', required=True, help='folder that gets train/ and test/ LMDBs')
    parser.add_argument('--num_train', type=int, default=20000)
    parser.add_argument('--num_test', type=int, default=1000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--vocab', help='word list to render (one per line); default: sample English words')
    parser.add_argument('--vocab_size', type=int, default=5000, help='words sampled when --vocab is not given')
    parser.add_argument('--vocab_kind', choices=('words', 'random'), default='words',
                        help='English words, or random letter-digit strings of the same length distribution')
    parser.add_argument('--vocab_out', help='write the vocabulary used here (one word per line)')
    parser.add_argument('--min_len', type=int, default=3)
    parser.add_argument('--max_len', type=int, default=12)
    parser.add_argument('--height', type=int, default=32, help='image height in pixels')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--overwrite', action='store_true', help='replace existing train/test LMDBs')
    parser.add_argument('--style', choices=('plain', 'scene'), default='plain',
                        help='plain: a font on a plain, gradient or noise background; scene: tools/synth')
    parser.add_argument('--feature', action='append', default=[], metavar='NAME=P',
                        help='scene style: probability of one feature (repeatable; names in tools/synth/scene.py)')
    parser.add_argument('--font_dirs', nargs='*', default=[], help='more folders to take fonts from')
    parser.add_argument('--texture_dirs', nargs='*', default=list(TEXTURE_DIRS),
                        help='scene style: folders of photographs and textures to cut surfaces from')
    parser.add_argument('--real_crops', nargs='*', default=[],
                        help='scene style: LMDBs of real training crops, used as surfaces and for colour pairs '
                             '(never a test set)')
    return parser.parse_args(argv)


def scene_setup(args: argparse.Namespace) -> tuple[SceneRenderer, Corpus | None]:
    """The scene renderer and, unless a vocabulary was given, the common-word corpus."""
    style = SceneStyle.parse(args.feature)
    textures = load_textures(texture_files(args.texture_dirs))
    crops = [img for path in args.real_crops for img in lmdb_images(path)]
    renderer = SceneRenderer(style, textures, crops, colour_pairs(crops))
    print(f'scene style: {len(textures)} textures, {len(crops)} real crops; {style}')
    return renderer, None if args.vocab else Corpus(common_words())


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    args = parse_args(argv)

    try:
        output = Path(args.output)
        for split in ('train', 'test'):
            if (output / split).exists() and not args.overwrite:
                raise ValueError(f'{output / split} already exists (pass --overwrite to replace it)')
        scene, corpus = scene_setup(args) if args.style == 'scene' else (None, None)
        if args.vocab:
            if not os.path.isfile(args.vocab):
                raise ValueError(f'vocabulary file not found: {args.vocab}')
            vocab = read_vocab(args.vocab)
            if not vocab:
                raise ValueError(f'vocabulary file is empty: {args.vocab}')
        elif corpus is not None:
            vocab = corpus.words  # the scene corpus's words (written by --vocab_out); labels come from the corpus
        else:
            vocab_rng = np.random.default_rng([args.seed, 2])
            vocab = make_vocabulary(args.vocab_size, args.min_len, args.max_len, vocab_rng, args.vocab_kind)
        fonts = find_fonts(args.font_dirs)
        if not fonts:
            raise ValueError('no usable TTF/OTF font found (looked in matplotlib and /usr/share/fonts)')
        if args.vocab_out:
            Path(args.vocab_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.vocab_out).write_text(''.join(w + '\n' for w in vocab), encoding='utf-8')
        if corpus is not None:
            print(coverage_line(fonts, text_alphabet([*corpus.words, string.ascii_letters + string.digits]),
                                'corpus alphabet'))
        else:
            print(coverage_line(fonts, text_alphabet(vocab), 'vocabulary'))
        used: Counter = Counter()
        for split_id, (split, num) in enumerate((('train', args.num_train), ('test', args.num_test))):
            used += render_split(output / split, num, args.seed, split_id, vocab, fonts, args.height, args.workers,
                                 args.overwrite, scene, corpus)
            print(f'wrote {num} images to {output / split}')
    except (ValueError, FileExistsError, DatasetError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if corpus is not None:
        print(f'text: {len(corpus.words)} common English words, random strings and numbers')
    else:
        print(f'vocabulary: {len(vocab)} words' + (f' (written to {args.vocab_out})' if args.vocab_out else ''))
    print(f'fonts used ({len(fonts)}):')
    for i, path in enumerate(fonts):
        print(f'  {used[i]:7d}  {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
