"""Value ranges of the numeric config keys: integers that must be integers, sizes >= 1, rates > 0.

The template's types let an int stand for a float and vice versa; `check_range` is the stricter second look
(`batch_size: 64.0`, `batch_size: 0`, `num_workers: -1`, `lr: 0` all name their key). `coerce_number` turns a
numeric string into a float for float keys: YAML 1.1 (PyYAML) reads `3e-4` as a string, `3.0e-4` as a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """An allowed interval of numbers; `integer` keys take whole numbers only (not 64.0)."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether `value` is inside the interval."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        """'an integer >= 1', 'a number > 0', 'a number in [0, 1)'."""
        kind = 'an integer' if self.integer else 'a number'
        if self.low is not None and self.high is not None:
            return (f'{kind} in {"(" if self.low_open else "["}{self.low:g}, '
                    f'{self.high:g}{")" if self.high_open else "]"}')
        if self.low is not None:
            return f'{kind} {">" if self.low_open else ">="} {self.low:g}'
        return kind


COUNT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
OPEN_FRACTION = Range(0, 1, high_open=True)

# Joined key -> range of the value (of every element for a list). None values (no value) are not checked.
RANGES: dict[str, Range] = {
    'global_seed': NON_NEGATIVE_INT,
    'dataset_train_batch_size': COUNT,
    'dataset_test_batch_size': COUNT,
    'dataset_num_workers': NON_NEGATIVE_INT,
    'dataset_max_length': COUNT,
    'dataset_image_height': COUNT,
    'dataset_image_width': COUNT,
    'dataset_smooth_factor': FRACTION,
    'training_epochs': COUNT,
    'training_show_iters': COUNT,
    'training_eval_iters': COUNT,
    'training_save_iters': COUNT,
    'training_start_iters': NON_NEGATIVE_INT,
    'training_stats_iters': COUNT,
    'training_max_iters': COUNT,
    'training_max_nonfinite': COUNT,
    'training_accumulate': COUNT,
    'training_tau': POSITIVE,
    'training_alpha': NON_NEGATIVE,
    'optimizer_lr': POSITIVE,
    'optimizer_wd': NON_NEGATIVE,
    'optimizer_clip_grad': POSITIVE,
    'optimizer_args_betas': OPEN_FRACTION,
    'optimizer_scheduler_periods': POSITIVE,  # epochs per lr phase; fractions are fine (experiments/oov_study)
    'optimizer_scheduler_gamma': POSITIVE,
    'model_vision_loss_weight': NON_NEGATIVE,
    'model_vision_backbone_ln': NON_NEGATIVE_INT,
    'model_vision_d_model': COUNT,
    'model_vision_nhead': COUNT,
    'model_vision_d_inner': COUNT,
    'model_vision_dropout': OPEN_FRACTION,
    'model_vision_resnet_widths': COUNT,
    'model_vision_resnet_layers': COUNT,
    'model_vision_attention_channels': COUNT,
    'model_projection_channels': COUNT,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_float(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def coerce_number(key: str, value: Any) -> Any:
    """A numeric string (or list of them) as a float for a non-integer key with a range; anything else unchanged."""
    limits = RANGES.get(key)
    if limits is None or limits.integer:
        return value
    if isinstance(value, str):
        number = _to_float(value)
        return value if number is None else number
    if isinstance(value, list):
        return [coerce_number(key, v) for v in value]
    return value


def range_problem(key: str, value: Any) -> str | None:
    """Why `value` is outside the range of `key` ('must be an integer >= 1, got 0'), or None when it is fine."""
    limits = RANGES.get(key)
    if limits is None or value is None:
        return None
    for item in value if isinstance(value, list) else [value]:
        if not _is_number(item):  # reached for keys whose template value is null (any type passes the type check)
            return f'must be {limits.describe()}, got {type(item).__name__} {item!r}'
        bad = not math.isfinite(item) or not limits.contains(item) or (limits.integer and not isinstance(item, int))
        if bad:
            shown = f'{item!r} in {value!r}' if isinstance(value, list) else repr(item)
            hint = (f' (write {int(item)})' if limits.integer and isinstance(item, float) and item.is_integer()
                    and limits.contains(item) else '')
            each = ' (every element)' if isinstance(value, list) else ''
            return f'must be {limits.describe()}{each}, got {shown}{hint}'
    return None
