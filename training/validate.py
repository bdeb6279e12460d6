"""Checks of the whole config that need no data: run name, model class, model geometry, optimiser, charset.

main.py (and train() / test() for callers from Python) runs them before any data opens or any file is written,
so a config that cannot build a model or an optimiser ends in one line naming the config file and its keys.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

import torch

from configuration import Config, ConfigError
from utils import CharsetMapper

ATTENTION_MODES = ('position', 'attention')
BACKBONES = ('transformer', 'resnet')
OPTIMIZER_ARGS = 'optimizer_args_'


def validate_config(config: Config) -> None:
    """Raise ConfigError (naming the config file and the keys) when the config cannot make a run."""
    source = config.path or 'config'
    check_name(config.global_name, source)
    model_class(config)
    check_geometry(config, source)
    optimizer_args(config)
    CharsetMapper(config.dataset_charset_path, config.dataset_max_length)


def check_name(name: Any, source: str = 'config') -> None:
    """A run name is one non-empty folder name (the work directory is <global.workdir>/<name>)."""
    if not isinstance(name, str) or not name.strip() or name in ('.', '..') or '/' in name or '\0' in name:
        raise ConfigError(f'{source}: global.name (--name) {name!r} must be a non-empty folder name without "/" '
                          '(the run writes into <global.workdir>/<name>)')


def model_class(config: Config) -> type:
    """The class `model.name` names (under modules/)."""
    source = config.path or 'config'
    module_name, _, class_name = config.model_name.rpartition('.')
    if not module_name.startswith('modules.'):
        raise ConfigError(f'{source}: model.name {config.model_name!r} must name a class under modules/ '
                          '(modules.model_vision.BaseVision or modules.model_conclr.ConCLR_Vision)')
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ConfigError(f'{source}: model.name {config.model_name!r}: no such class here (this project has '
                          'modules.model_vision.BaseVision and modules.model_conclr.ConCLR_Vision)') from None


def _halved(size: int, times: int) -> int:
    """A size after `times` stride-2 convolutions with kernel 3 and padding 1 (ceil(size / 2) each)."""
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


def _unet_fits(side: int, halves_first: bool) -> bool:
    """Whether the position attention's key U-Net meets its skip connections at equal sizes along a feature-map
    side: its four encoder blocks halve the width every time and the height from the second block on (stride 2,
    rounding up); the decoder doubles the last output three times, adding the block outputs in reverse order."""
    outputs = [_halved(side, k + (1 if halves_first else 0)) for k in range(4)]
    return all(outputs[k + 1] * 2 == outputs[k] for k in range(3))


def check_geometry(config: Config, source: str = 'config') -> None:
    """The sizes the model is built from must fit together (image size vs the attention's positions, d_model vs
    the last ResNet width, nhead vs d_model, known backbone and attention mode)."""
    v = 'model.vision.'
    if config.model_vision_backbone not in BACKBONES:
        raise ConfigError(f'{source}: {v}backbone {config.model_vision_backbone!r} is none of {BACKBONES}')
    if config.model_vision_attention not in ATTENTION_MODES:
        raise ConfigError(f'{source}: {v}attention {config.model_vision_attention!r} is none of {ATTENTION_MODES}')
    widths, layers = config.model_vision_resnet_widths, config.model_vision_resnet_layers
    if len(widths) != 5 or len(layers) != 5:
        raise ConfigError(f'{source}: {v}resnet_widths and {v}resnet_layers need 5 entries each (layer1..layer5), '
                          f'got {widths} and {layers}')
    d_model = config.model_vision_d_model
    if widths[-1] != d_model:
        raise ConfigError(f'{source}: {v}d_model {d_model} must equal the last entry of {v}resnet_widths '
                          f'({widths[-1]}): the encoder and attention read the ResNet\'s output')
    if config.model_vision_backbone == 'transformer' and d_model % config.model_vision_nhead:
        raise ConfigError(f'{source}: {v}nhead {config.model_vision_nhead} does not divide {v}d_model {d_model}')
    height, width = config.dataset_image_height, config.dataset_image_width
    for key, size in (('dataset.image_height', height), ('dataset.image_width', width)):
        if size % 4:
            raise ConfigError(f'{source}: {key} {size} must be a multiple of 4 (the ResNet halves it twice and '
                              f'the attention expects {size // 4} positions, it would give {_halved(size, 2)})')
    if config.model_vision_attention == 'position':
        for key, size, halves_first, multiple in (('dataset.image_height', height, False, 32),
                                                  ('dataset.image_width', width, True, 64)):
            if not _unet_fits(size // 4, halves_first):
                raise ConfigError(f'{source}: {key} {size} gives a feature map side of {size // 4} on which '
                                  f'{v}attention position cannot halve and double back to the same sizes (a '
                                  f'multiple of {multiple} works, e.g. {multiple * (1 + size // multiple)})')


def optimizer_class(config: Config) -> type:
    """The torch.optim class `optimizer.type` names."""
    opt_class = getattr(torch.optim, str(config.optimizer_type), None)
    if not (isinstance(opt_class, type) and issubclass(opt_class, torch.optim.Optimizer)):
        raise ConfigError(f'{config.path or "config"}: optimizer.type {config.optimizer_type!r} is not a '
                          'torch.optim optimiser class')
    return opt_class


def optimizer_args(config: Config) -> dict[str, Any]:
    """The `optimizer.args` the optimiser's signature takes. A template default it does not take (Adam's betas
    for SGD) is left out; an argument the config file sets that it does not take is an error naming both."""
    opt_class = optimizer_class(config)
    accepted = [name for name in inspect.signature(opt_class.__init__).parameters if name not in ('self', 'params')]
    args = {}
    for key, value in config.items():
        if not key.startswith(OPTIMIZER_ARGS) or value is None:
            continue
        name = key.removeprefix(OPTIMIZER_ARGS)
        if name in accepted:
            args[name] = tuple(value) if isinstance(value, list) else value
        elif not config.is_template_default(key):
            raise ConfigError(f'{config.path or "config"}: optimizer.args.{name} is not an argument of '
                              f'{opt_class.__name__} (it takes {", ".join(accepted)})')
    return args
