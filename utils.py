"""Configuration, charset mapping, logging and seeding shared by training, testing and tools."""

from __future__ import annotations

import difflib
import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import yaml

from support.config_aliases import AliasError, translate_aliases
from support.config_ranges import coerce_number, range_problem

REPO_ROOT = Path(__file__).resolve().parent
TEMPLATE_PATH = REPO_ROOT / 'configs' / 'template.yaml'
NULL_CHAR = '\u2591'
# Input normalisation of every ABINet model (ImageNet statistics), RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_path(path: str | os.PathLike) -> Path:
    """A relative path as given when it exists from the current directory, else relative to the repository."""
    path = Path(path)
    if path.is_absolute() or path.exists() or not (REPO_ROOT / path).exists():
        return path
    return REPO_ROOT / path


class ConfigError(ValueError):
    """A configuration file holds an unknown key or a value of the wrong type."""


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads the `!!python/tuple` tag official ABINet configs use."""


_ConfigLoader.add_constructor('tag:yaml.org,2002:python/tuple',
                              lambda loader, node: list(loader.construct_sequence(node)))


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML file safely (no arbitrary Python objects) into a dict; a syntax error names file:line:column."""
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.load(f, Loader=_ConfigLoader)
    except yaml.MarkedYAMLError as e:
        mark, start = e.problem_mark or e.context_mark, e.context_mark
        where = f'{path}:{mark.line + 1}:{mark.column + 1}' if mark is not None else str(path)
        problem = e.problem or e.context or 'syntax error'
        if e.context and e.problem and start is not None:
            problem += f' ({e.context} that starts at {start.line + 1}:{start.column + 1})'
        raise ConfigError(f'{where}: YAML error: {problem}') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'{path}: YAML error: {" ".join(str(e).split())}') from None
    except UnicodeDecodeError:
        raise ConfigError(f'{path}: not a UTF-8 text file') from None
    except IsADirectoryError:
        raise ConfigError(f'{path} is a folder, not a config file') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: top level must be a mapping, got {type(data).__name__}')
    return data


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
    """Flatten nested dicts into joined keys: {'a': {'b': 1}} -> {'a_b': 1}."""
    flat = {}
    for key, value in tree.items():
        joined = f'{prefix}_{key}' if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, joined))
        else:
            flat[joined] = value
    return flat


def _type_ok(default: Any, value: Any) -> bool:
    """Whether `value` may replace the template's `default` (None on either side accepts anything)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, str):
        return isinstance(value, str)
    return isinstance(value, type(default))


# Key prefixes whose keys need not be in the template: `optimizer.args` holds whatever the optimiser takes.
OPEN_PREFIXES = ('optimizer_args_',)
# Keys whose template default is a scalar but that also take a list (one value per output).
_SCALAR_OR_LIST = {'model_vision_loss_weight'}


class Config:
    """A YAML config merged over `configs/template.yaml`, read by joined keys (`config.dataset_train_roots`)."""

    def __init__(self, path: str | os.PathLike | None = None, template: str | os.PathLike = TEMPLATE_PATH):
        values = _flatten(load_yaml(template))
        self.__dict__['_known'] = dict(values)
        self.__dict__['_values'] = values
        self.__dict__['path'] = str(path) if path is not None else None
        self.__dict__['translations'] = []  # one line per upstream alias translated (support/config_aliases.py)
        self.__dict__['_sources'] = {}  # key -> where its value came from (the config file, a flag, 'setting')
        if path is not None:
            self.update(self._translated(_flatten(load_yaml(path)), str(path)), source=str(path))

    def _translated(self, values: dict[str, Any], source: str) -> dict[str, Any]:
        """`values` with the ConCLR reproduction's and ABINet's alias keys translated; the lines kept."""
        try:
            values, notes = translate_aliases(values, source)
        except AliasError as e:
            raise ConfigError(str(e)) from None
        self.translations.extend(notes)
        return values

    def _nearest(self, key: str) -> str:
        close = difflib.get_close_matches(key, list(self._known), n=1, cutoff=0.0)
        return close[0] if close else '?'

    def check(self, key: str, value: Any, source: str = 'config') -> None:
        """Raise ConfigError unless `key` is known and `value` has the template's type."""
        if key not in self._known:
            if key.startswith(OPEN_PREFIXES):
                return  # checked against the optimiser's signature (training/validate.py)
            raise ConfigError(f'{source}: unknown key {key!r} (did you mean {self._nearest(key)!r}?)')
        default = self._known[key]
        list_ok = key in _SCALAR_OR_LIST and isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not list_ok and not _type_ok(default, value):
            raise ConfigError(f'{source}: key {key!r} expects {type(default).__name__} '
                              f'(like {default!r}), got {type(value).__name__} {value!r}')
        problem = range_problem(key, value)
        if problem is not None:
            raise ConfigError(f'{source}: key {key!r} {problem}')

    def update(self, values: dict[str, Any], source: str = 'config') -> None:
        """Set several joined keys at once, each checked against the template (numeric strings of float keys,
        such as YAML's `3e-4`, become floats)."""
        values = {key: coerce_number(key, value) for key, value in values.items()}
        for key, value in values.items():
            self.check(key, value, source)
        self._values.update(values)
        self._sources.update(dict.fromkeys(values, source))

    def source_of(self, key: str) -> str | None:
        """Where the value of `key` came from: the config file's path, a flag such as '--checkpoint', 'setting'
        (code), or None for the template's default."""
        return self._sources.get(key)

    def is_template_default(self, key: str) -> bool:
        """Whether `key` holds the template's own value (no config file or flag changed it)."""
        return key in self._known and self._values.get(key) == self._known[key]

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__['_values']
        if key in values:
            return values[key]
        raise AttributeError(f'unknown config key {key!r} (did you mean {self._nearest(key)!r}?)')

    def __setattr__(self, key: str, value: Any) -> None:
        self.update({key: value}, source='setting')

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def items(self) -> Iterable[tuple[str, Any]]:
        """The joined keys and their values, sorted by key."""
        return sorted(self._values.items())

    def __repr__(self) -> str:
        lines = [f'{k} = {v!r}' for k, v in self.items()]
        return 'Config(\n  ' + '\n  '.join(lines) + '\n)'

    @property
    def workdir(self) -> Path:
        """The run's work directory, `<global.workdir>/<global.name>`."""
        return Path(self.global_workdir) / self.global_name


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
