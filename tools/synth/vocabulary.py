"""Label sources for plain renders: a vocabulary of dictionary words or random strings, one case per render."""

from __future__ import annotations

import os
import string
from functools import lru_cache

import numpy as np


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


def read_vocab(path: str | os.PathLike) -> list[str]:
    """One word per line; blank lines skipped, duplicates dropped (first kept)."""
    with open(path, encoding='utf-8') as f:
        words = [line.strip() for line in f]
    return list(dict.fromkeys(w for w in words if w))
