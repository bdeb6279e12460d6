"""Charset mapping, logging, seeding and the input normalisation shared by training, testing and tools (the
configuration itself lives in configuration/)."""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from configuration import (
    Config,  # noqa: F401  (upstream's `from utils import Config`)
    ConfigError,
    resolve_path,
)

NULL_CHAR = '\u2591'
# Input normalisation of every ABINet model (ImageNet statistics), RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CharsetError(ConfigError):
    """A charset file that cannot be read as one `<index>\t<char>` per line."""


def _charset_line(path: Path, lineno: int, line: str, expected: int, seen: dict[str, int]) -> str:
    """The character of one charset line, or CharsetError saying what is wrong with it (file:line)."""
    where = f'{path}:{lineno}'
    parts = line.split('\t')
    if len(parts) != 2:
        hint = ' (a space instead of the tab?)' if len(line.split(' ')) == 2 else ''
        raise CharsetError(f'{where}: expected "<index>\\t<char>", got {line!r}{hint}')
    index, char = parts
    if len(char) != 1:
        raise CharsetError(f'{where}: one character per line, got {char!r} ({len(char)} characters)')
    try:
        number = int(index)
    except ValueError:
        raise CharsetError(f'{where}: the index {index!r} is not an integer') from None
    if number != expected:
        what = 'missing' if number > expected else 'out of order'
        raise CharsetError(f'{where}: index {number} where {expected} was expected (index {expected} is {what})')
    if char in seen:
        raise CharsetError(f'{where}: character {char!r} is already at line {seen[char]} (each character once: a '
                           'duplicate would make two classes read the same)')
    seen[char] = lineno
    return char


class CharsetMapper:
    """Maps text to class indices and back; class 0 is the null character (end and padding)."""

    def __init__(self, charset_path: str | os.PathLike, max_length: int = 25):
        charset_path = resolve_path(charset_path)
        self.path = str(charset_path)
        self.max_length = max_length
        self.null_char = NULL_CHAR
        chars = [NULL_CHAR]
        seen: dict[str, int] = {}
        try:
            with open(charset_path, encoding='utf-8') as f:
                lines = f.read().split('\n')
        except FileNotFoundError:
            raise CharsetError(f'charset file not found: {charset_path} (dataset.charset_path)') from None
        except IsADirectoryError:
            raise CharsetError(f'{charset_path} is a folder, not a charset file (dataset.charset_path)') from None
        except UnicodeDecodeError:
            raise CharsetError(f'{charset_path}: not a UTF-8 text file (dataset.charset_path)') from None
        for lineno, line in enumerate(lines, 1):
            line = line.removesuffix('\r')
            if line:
                chars.append(_charset_line(charset_path, lineno, line, len(chars) - 1, seen))
        if len(chars) == 1:
            raise CharsetError(f'{charset_path}: no character in the charset file (dataset.charset_path)')
        self.chars = chars
        self.char_to_label = {c: i for i, c in enumerate(chars)}
        self.num_classes = len(chars)
        self.alphanumeric = all(c.isascii() and c.isalnum() for c in chars[1:])
        self.has_upper = any(c.isupper() for c in chars[1:])

    def clean(self, text: str, case_sensitive: bool = False) -> str:
        """Normalise a label: lower-case unless case-sensitive; keep only [0-9a-zA-Z] for alphanumeric charsets."""
        if not case_sensitive:
            text = text.lower()
        if self.alphanumeric:
            text = ''.join(c for c in text if c.isascii() and c.isalnum())
        if not self.has_upper:
            text = text.lower()
        return text

    def unknown_chars(self, text: str, case_sensitive: bool = False) -> str:
        """The characters of a raw label this charset cannot hold, once each in order of appearance (for an
        alphanumeric charset only letters and digits: it drops punctuation and spaces by design)."""
        if not case_sensitive or not self.has_upper:
            text = text.lower()
        found: list[str] = []
        for c in text:
            if c not in self.char_to_label and c not in found and (c.isalnum() or not self.alphanumeric):
                found.append(c)
        return ''.join(found)

    def is_valid(self, text: str) -> bool:
        """Whether a cleaned label can be a target: 1..max_length characters, all in the charset."""
        return 0 < len(text) <= self.max_length and all(c in self.char_to_label for c in text)

    def encode(self, text: str, padded: bool = True) -> list[int]:
        """Class indices of `text`, null-padded to max_length + 1 slots when `padded`."""
        labels = [self.char_to_label[c] for c in text]
        if padded:
            labels += [0] * (self.max_length + 1 - len(labels))
        return labels

    def decode(self, labels: Iterable[int]) -> str:
        """Text of class indices, cut at the first null."""
        out = []
        for label in labels:
            label = int(label)
            if label == 0:
                break
            out.append(self.chars[label])
        return ''.join(out)

    def onehot(self, text: str) -> tuple[torch.Tensor, int]:
        """One-hot target (max_length + 1 x num_classes) and length (characters + 1) of a clean label."""
        labels = torch.tensor(self.encode(text))
        target = torch.zeros(self.max_length + 1, self.num_classes)
        target[torch.arange(len(labels)), labels] = 1.0
        return target, len(text) + 1


class WorkdirError(ConfigError):
    """The work directory cannot be written."""


def check_writable(folder: str | os.PathLike) -> None:
    """Raise WorkdirError unless a file can be created in `folder`, or, while it does not exist yet, in its nearest
    existing parent (which is left untouched)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise WorkdirError(f'work directory {folder}: {probe} is not a folder')
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        where = '' if probe == folder else f' (its parent {probe} cannot be written)'
        raise WorkdirError(f'work directory {folder} is not writable{where}: {e.strerror}') from None


def setup_logger(workdir: str | os.PathLike, phase: str, name: str = 'conclr') -> logging.Logger:
    """Logger writing to stdout and `<workdir>/<phase>.txt` (train.txt or test.txt; created at the first message)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter('[%(asctime)s %(levelname)s] %(message)s', datefmt='%Y-%m-%d %H:%M:%S')
    for handler in (logging.StreamHandler(sys.stdout),
                    logging.FileHandler(Path(workdir) / f'{phase}.txt', encoding='utf-8', delay=True)):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def get_logger(name: str = 'conclr') -> logging.Logger:
    """The project logger (set up by `setup_logger`, silent otherwise)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def seed_everything(seed: int | None) -> None:
    """Seed Python, NumPy and torch; do nothing for None."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def tune_malloc() -> bool:
    """glibc only: keep freed memory in the process (no trimming, no mmap below 1 GiB); False elsewhere.

    By default glibc hands every large freed block (a batch of images, an activation) back to the kernel, so
    the next step faults its pages in again, zero-filled; on a virtual machine that made CPU training steps
    10-15 % slower and memory-bound work like ConAug several times slower. The process then stays at its peak
    memory. Irreversible for this process; forked DataLoader workers inherit it.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers in glibc's malloc.h
        return bool(libc.mallopt(m_trim_threshold, 2**31 - 1)) and bool(libc.mallopt(m_mmap_threshold, 2**30))
    except (OSError, AttributeError):
        return False
