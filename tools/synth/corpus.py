"""What a scene render says: common English words, random strings and numbers, in the cases signs use."""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

LOWER_ALNUM = string.ascii_lowercase + string.digits


@lru_cache(maxsize=4)
def common_words(n: int = 60000, min_len: int = 2, max_len: int = 14) -> tuple[str, ...]:
    """The `n` most frequent English words (wordfreq), kept when alphabetic ASCII of `min_len`..`max_len` letters."""
    from wordfreq import top_n_list

    return tuple(w for w in top_n_list('en', n) if w.isascii() and w.isalpha() and min_len <= len(w) <= max_len)


def apply_case(word: str, rng: np.random.Generator, probs: Sequence[float] = (0.4, 0.3, 0.3)) -> str:
    """lower, Capitalised or UPPER with probabilities `probs`."""
    style = rng.choice(3, p=probs)
    if style == 1:
        return word[:1].upper() + word[1:]
    return word.upper() if style == 2 else word


@dataclass(frozen=True)
class CorpusMix:
    """Shares of each kind of text; they are normalised, so only their ratios matter."""

    words: float = 0.8     # a common English word, uniformly over the list (as MJSynth samples its dictionary)
    random: float = 0.08   # random letters and digits, 1-10 characters
    numbers: float = 0.08  # digits only, 1-8 of them
    mixed: float = 0.04    # a word and a number joined (route66, 4you)


class Corpus:
    """Samples labels: `sample(rng)` returns one string of [0-9a-zA-Z]."""

    def __init__(self, words: Sequence[str], mix: CorpusMix = CorpusMix()):
        if not words:
            raise ValueError('the corpus needs at least one word')
        self.words = list(words)
        shares = np.array([mix.words, mix.random, mix.numbers, mix.mixed], dtype=float)
        if (shares < 0).any() or shares.sum() <= 0:
            raise ValueError(f'corpus shares must be >= 0 and not all 0, got {mix}')
        self.shares = shares / shares.sum()

    def _word(self, rng: np.random.Generator) -> str:
        return self.words[rng.integers(len(self.words))]

    def sample(self, rng: np.random.Generator) -> str:
        """One label."""
        kind = rng.choice(4, p=self.shares)
        if kind == 0:
            return apply_case(self._word(rng), rng)
        if kind == 1:
            alphabet = LOWER_ALNUM if rng.random() < 0.5 else string.ascii_letters + string.digits
            return ''.join(rng.choice(list(alphabet), size=int(rng.integers(1, 11))))
        if kind == 2:
            return ''.join(rng.choice(list(string.digits), size=int(rng.integers(1, 9))))
        number = ''.join(rng.choice(list(string.digits), size=int(rng.integers(1, 4))))
        word = apply_case(self._word(rng), rng)
        return word + number if rng.random() < 0.6 else number + word
