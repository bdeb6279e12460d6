"""Run configuration: a YAML file merged over configs/template.yaml, checked key by key (names, types, ranges)
and read by joined keys; upstream's alias keys are translated on the way in."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from configuration.aliases import AliasError, translate_aliases
from configuration.ranges import coerce_number, range_problem

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO_ROOT / 'configs' / 'template.yaml'


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
        self.__dict__['translations'] = []  # one line per upstream alias translated (configuration/aliases.py)
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
