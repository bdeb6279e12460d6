"""Keys of the public ConCLR reproduction's (and ABINet's) configs that this project names differently.

Each alias found in a config file is translated into this project's key before the template check, and the
translation is recorded as one line (`Config.translations`, logged by main.py and demo.py). A value this project
cannot express, or one that contradicts the same file's own key, is an error naming both.
"""

from __future__ import annotations

from typing import Any

CONCLR_MODEL = 'modules.model_conclr.ConCLR_Vision'
# model.name of the reproduction -> the same class here.
MODEL_NAMES = {'modules.model_conclr_vision.ConCLR_Vision': CONCLR_MODEL}
# dataset.conaug_type of the reproduction -> conaug.side.
CONAUG_TYPES = {'RandCat': 'batch'}


class AliasError(ValueError):
    """An alias whose value has no translation or contradicts another key of the same file."""


def _set(values: dict[str, Any], key: str, value: Any, alias: str, target: str, source: str) -> None:
    """values[key] = value, unless the file already gives `key` another value (`alias`, `target`: YAML paths)."""
    if key in values and values[key] != value:
        raise AliasError(f'{source}: {alias} means {target}: {value!r}, but the file also sets {target}: '
                         f'{values[key]!r}')
    values[key] = value


def _model_name(values: dict[str, Any], source: str, notes: list[str]) -> None:
    name = values.get('model_name')
    if name in MODEL_NAMES:
        values['model_name'] = MODEL_NAMES[name]
        notes.append(f'{source}: model.name {name!r} (ConCLR reproduction) -> {MODEL_NAMES[name]!r}')


def _conclr_flag(values: dict[str, Any], source: str, notes: list[str]) -> None:
    flag = values.pop('global_conclr')
    if not isinstance(flag, bool):
        raise AliasError(f'{source}: global.conclr expects true or false, got {flag!r}')
    name = values.get('model_name')
    if flag:
        if name is not None and name != CONCLR_MODEL:
            raise AliasError(f'{source}: global.conclr: true asks for ConCLR training, but model.name is {name!r} '
                             f'(ConCLR trains {CONCLR_MODEL})')
        values['model_name'] = CONCLR_MODEL
        done = 'nothing more to change: model.name names' if name else 'model.name'
        notes.append(f'{source}: global.conclr: true (ConCLR reproduction) -> {done} {CONCLR_MODEL!r} (ConCLR '
                     'training follows from the model class here)')
    else:
        if name == CONCLR_MODEL:
            raise AliasError(f'{source}: global.conclr: false but model.name is {name!r}; ConCLR training follows '
                             'from the model class here (use modules.model_vision.BaseVision)')
        notes.append(f'{source}: global.conclr: false (ConCLR reproduction) -> nothing to change: the model class '
                     f'{name or "from the template"} decides')


def _conaug_type(values: dict[str, Any], source: str, notes: list[str]) -> None:
    kind = values.pop('dataset_conaug_type')
    if kind not in CONAUG_TYPES:
        raise AliasError(f'{source}: dataset.conaug_type {kind!r}: only {sorted(CONAUG_TYPES)} is known (one coin '
                         'flip per view for the whole batch); this project says conaug.side: fixed | batch | sample')
    _set(values, 'conaug_side', CONAUG_TYPES[kind], 'dataset.conaug_type', 'conaug.side', source)
    notes.append(f'{source}: dataset.conaug_type {kind!r} (ConCLR reproduction) -> conaug.side: {CONAUG_TYPES[kind]}')


def _embedding_channels(values: dict[str, Any], source: str, notes: list[str]) -> None:
    channels = values.pop('model_embedding_channels')
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise AliasError(f'{source}: model.embedding_channels expects an integer, got {channels!r}')
    _set(values, 'model_projection_channels', channels, 'model.embedding_channels', 'model.projection.channels',
         source)
    notes.append(f'{source}: model.embedding_channels {channels} (ConCLR reproduction) -> '
                 f'model.projection.channels: {channels}')


def _one_hot_y(values: dict[str, Any], source: str, notes: list[str]) -> None:
    one_hot = values.pop('dataset_one_hot_y')
    if not isinstance(one_hot, bool):
        raise AliasError(f'{source}: dataset.one_hot_y expects true or false, got {one_hot!r}')
    if not one_hot and values.get('dataset_smooth_label'):
        raise AliasError(f'{source}: dataset.one_hot_y: false (class-index targets) contradicts '
                         'dataset.smooth_label: true (smoothing needs one-hot targets)')
    notes.append(f'{source}: dataset.one_hot_y: {str(one_hot).lower()} (ABINet) -> nothing to change: targets are '
                 'one-hot here and the cross-entropy of one-hot and class-index targets is the same')


# Alias key -> its translation, applied in this order (model.name first: global.conclr checks the translated name).
_ALIASES = (('model_name', _model_name), ('global_conclr', _conclr_flag), ('dataset_conaug_type', _conaug_type),
            ('model_embedding_channels', _embedding_channels), ('dataset_one_hot_y', _one_hot_y))


def translate_aliases(values: dict[str, Any], source: str = 'config') -> tuple[dict[str, Any], list[str]]:
    """A copy of a config file's joined keys with every alias translated, and one line per translated key."""
    values = dict(values)
    notes: list[str] = []
    for key, translate in _ALIASES:
        if key in values:
            translate(values, source, notes)
    return values, notes
