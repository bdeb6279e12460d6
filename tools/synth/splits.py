"""Rendering one split into an LMDB, in parallel work units with their own seeds (the bytes do not depend on
the number of workers)."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from typing import Iterator

import cv2
import numpy as np

from tools.lmdb_writer import write_lmdb
from tools.synth.corpus import Corpus
from tools.synth.fonts import pick_font
from tools.synth.plain import render_word
from tools.synth.scene import SceneRenderer
from tools.synth.vocabulary import apply_case

CHUNK = 256  # renders per work unit; each unit has its own seed, so output does not depend on --workers
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
