"""config_ranges: integer keys refuse floats, sizes and rates their out-of-range values, float keys read numeric
strings; and through Config, one message naming the file, the key and the value."""

from __future__ import annotations

import pytest

from configuration import Config, ConfigError
from configuration.ranges import RANGES, Range, coerce_number, range_problem
from tests.helpers import write_config


def test_range_bounds_open_and_closed():
    count, rate, fraction = Range(1, integer=True), Range(0, low_open=True), Range(0, 1, high_open=True)
    assert [count.contains(v) for v in (0, 1, 10**9)] == [False, True, True]
    assert [rate.contains(v) for v in (0, 1e-12, 5)] == [False, True, True]
    assert [fraction.contains(v) for v in (-0.1, 0, 0.999, 1)] == [False, True, True, False]
    assert (count.describe(), rate.describe(), fraction.describe()) == \
        ('an integer >= 1', 'a number > 0', 'a number in [0, 1)')


@pytest.mark.parametrize('key, value, problem', [
    ('dataset_test_batch_size', 64.0, 'must be an integer >= 1, got 64.0 (write 64)'),
    ('dataset_train_batch_size', 0, 'must be an integer >= 1, got 0'),
    ('dataset_train_batch_size', 2.5, 'must be an integer >= 1, got 2.5'),
    ('dataset_num_workers', -1, 'must be an integer >= 0, got -1'),
    ('optimizer_lr', 0, 'must be a number > 0, got 0'),
    ('optimizer_lr', float('inf'), 'must be a number > 0, got inf'),
    ('optimizer_scheduler_periods', [6, 0], 'must be a number > 0 (every element), got 0 in [6, 0]'),
    ('optimizer_args_betas', [0.9, 1.0], 'must be a number in [0, 1) (every element), got 1.0 in [0.9, 1.0]'),
])
def test_out_of_range_values_are_described(key, value, problem):
    assert range_problem(key, value) == problem


@pytest.mark.parametrize('key, value', [('dataset_num_workers', 0), ('optimizer_lr', 1), ('optimizer_lr', 3e-4),
                                        ('training_max_iters', None), ('dataset_data_aug', True),
                                        ('optimizer_scheduler_periods', [0.57, 1]), ('global_name', 'x')])
def test_values_in_range_and_keys_without_a_range_pass(key, value):
    assert range_problem(key, value) is None


def test_numeric_strings_become_floats_for_float_keys_only():
    assert coerce_number('optimizer_lr', '3e-4') == 3e-4
    assert coerce_number('model_vision_loss_weight', ['1', '5e-1']) == [1.0, 0.5]
    assert coerce_number('optimizer_lr', 'fast') == 'fast'  # left for the type check to report
    assert coerce_number('optimizer_lr', 'nan') == 'nan'
    assert coerce_number('dataset_train_batch_size', '1e2') == '1e2'  # an integer key takes no float
    assert coerce_number('global_name', '1e5') == '1e5'


def test_every_range_key_is_a_template_key():
    known = dict(Config().items())
    assert set(RANGES) <= set(known)
    for key, limits in RANGES.items():  # the defaults themselves are in range
        assert range_problem(key, known[key]) is None, key


def test_config_file_with_a_bad_value_names_file_key_and_value(tmp_path):
    path = write_config(tmp_path / 'c.yaml', dataset={'test': {'batch_size': 64.0}})
    with pytest.raises(ConfigError) as info:
        Config(path)
    assert str(info.value) == f"{path}: key 'dataset_test_batch_size' must be an integer >= 1, got 64.0 (write 64)"
    with pytest.raises(ConfigError, match="'dataset_num_workers' must be an integer >= 0, got -1"):
        Config().dataset_num_workers = -1


def test_yaml_1_1_exponent_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('optimizer:\n  lr: 3e-4\n  wd: 1E-5\n')
    config = Config(path)
    assert config.optimizer_lr == 3e-4 and isinstance(config.optimizer_lr, float) and config.optimizer_wd == 1e-5
