"""Config merging and errors, charset mapping, logger, malloc tuning."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from configuration import REPO_ROOT, Config, ConfigError
from tests.helpers import write_config
from utils import CharsetMapper, WorkdirError, check_writable, setup_logger


def test_defaults_are_the_official_ones_and_joined_keys_work():
    config = Config()
    assert config.dataset_max_length == 25
    assert config.model_vision_backbone_ln == 3
    assert config.model_vision_d_model == 512
    assert config.optimizer_args_betas == [0.9, 0.999]
    assert config.optimizer_scheduler_periods == [6, 2]


def test_file_overrides_template_and_keeps_other_defaults(tmp_path):
    path = write_config(tmp_path / 'c.yaml', dataset={'train': {'roots': ['a', 'b']}}, training={'epochs': 2})
    config = Config(path)
    assert config.dataset_train_roots == ['a', 'b']
    assert config.training_epochs == 2
    assert config.dataset_test_batch_size == 384


def test_unknown_key_names_it_and_the_nearest_known_one(tmp_path):
    path = write_config(tmp_path / 'c.yaml', dataset={'train': {'root': ['a']}})
    with pytest.raises(ConfigError) as err:
        Config(path)
    message = str(err.value)
    assert "'dataset_train_root'" in message and "'dataset_train_roots'" in message and 'c.yaml' in message


def test_misspelt_section_is_an_error(tmp_path):
    path = write_config(tmp_path / 'c.yaml', trainig={'epochs': 3})
    with pytest.raises(ConfigError, match="trainig_epochs.*training_epochs"):
        Config(path)


@pytest.mark.parametrize('section, value', [
    ({'dataset': {'train': {'roots': 'data/one_root'}}}, 'list'),
    ({'training': {'epochs': 'eight'}}, 'int'),
    ({'dataset': {'data_aug': 1}}, 'bool'),
    ({'optimizer': {'lr': [0.1]}}, 'float'),
])
def test_wrong_type_is_an_error(tmp_path, section, value):
    path = write_config(tmp_path / 'c.yaml', **section)
    with pytest.raises(ConfigError, match=f'expects {value}'):
        Config(path)


def test_null_and_int_for_float_are_accepted(tmp_path):
    path = write_config(tmp_path / 'c.yaml', optimizer={'lr': 1, 'clip_grad': None}, global_={})
    path.write_text(path.read_text().replace('global_', 'global'))
    config = Config(path)
    assert config.optimizer_lr == 1 and config.optimizer_clip_grad is None


def test_loss_weight_takes_a_number_or_a_list(tmp_path):
    assert Config(write_config(tmp_path / 'a.yaml', model={'vision': {'loss_weight': [1.0, 0.5, 0.5]}})) \
        .model_vision_loss_weight == [1.0, 0.5, 0.5]
    with pytest.raises(ConfigError):
        Config(write_config(tmp_path / 'b.yaml', model={'vision': {'loss_weight': ['x']}}))


def test_python_tuple_tag_of_official_configs_is_read_safely(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('optimizer:\n  args:\n    betas: !!python/tuple [0.9, 0.99]\n')
    assert Config(path).optimizer_args_betas == [0.9, 0.99]
    path.write_text('optimizer:\n  args:\n    betas: !!python/object/apply:os.system ["true"]\n')
    with pytest.raises(Exception):
        Config(path)


def test_setting_and_reading_unknown_attributes_fail():
    config = Config()
    with pytest.raises(AttributeError, match='dataset_train_roots'):
        config.dataset_train_root
    with pytest.raises(ConfigError):
        config.dataset_train_root = ['x']
    with pytest.raises(ConfigError):
        config.dataset_train_roots = 'x'
    config.global_phase = 'test'
    assert config.global_phase == 'test'


def test_every_shipped_config_loads():
    # experiments/oov_study/configs holds the study's presets (tested there), not project configs.
    folders = ('configs', 'checkpoints', 'experiments/shipped_models/configs', 'experiments/recipe_sweep/configs')
    paths = [p for folder in folders for p in sorted((REPO_ROOT / folder).rglob('*.yaml'))]
    assert len(paths) >= 25
    for path in paths:
        Config(path)


def test_every_template_key_is_commented():
    """Each leaf key carries a comment on its line or on its continuation lines."""
    import re

    lines = (REPO_ROOT / 'configs' / 'template.yaml').read_text().splitlines()
    key_line = re.compile(r'^\s*(\w+):(.*)$')
    leaves = []  # (lineno, key, text of the key and its continuation lines)
    for lineno, line in enumerate(lines, 1):
        match = key_line.match(line)
        if match:
            value = match.group(2).strip()
            if value and not value.startswith('#'):
                leaves.append([lineno, match.group(1), line])
        elif leaves and line.strip() and not line.lstrip().startswith('#') and lineno == leaves[-1][0] + 1:
            leaves[-1][2] += line
            leaves[-1][0] = lineno
    assert len(leaves) == len(Config().items())
    for lineno, key, text in leaves:
        assert '#' in text, f'template.yaml: key {key!r} (line {lineno}) has no comment'


def test_charset36_mapping_and_cleaning():
    charset = CharsetMapper(REPO_ROOT / 'data' / 'charset_36.txt', max_length=25)
    assert charset.num_classes == 37
    assert charset.encode('az19', padded=False) == [1, 26, 27, 35]
    assert charset.encode('0', padded=False) == [36]
    assert charset.clean('Hello, World 2!') == 'helloworld2'
    assert charset.decode([8, 5, 0, 3]) == 'he'
    target, length = charset.onehot('ab')
    assert target.shape == (26, 37) and length == 3
    assert target.argmax(-1).tolist()[:4] == [1, 2, 0, 0] and target.sum() == 26
    assert not charset.is_valid('') and not charset.is_valid('a' * 26) and charset.is_valid('a' * 25)


def test_charset62_keeps_case_when_asked():
    charset = CharsetMapper(REPO_ROOT / 'data' / 'charset_62.txt')
    assert charset.num_classes == 63
    assert charset.clean('AbC-1', case_sensitive=True) == 'AbC1'
    assert charset.clean('AbC-1') == 'abc1'
    assert charset.encode('A0', padded=False) == [11, 1]


def test_charset_file_errors_name_the_line(tmp_path):
    path = tmp_path / 'bad.txt'
    path.write_text('0\ta\n1\tbb\n')
    with pytest.raises(ValueError, match='bad.txt:2'):
        CharsetMapper(path)


def test_logger_writes_phase_file(tmp_path):
    logger = setup_logger(tmp_path, 'train')
    logger.info('hello log')
    for handler in logger.handlers:
        handler.flush()
    assert 'hello log' in (tmp_path / 'train.txt').read_text()


RSS_AFTER_FREE = '''
import sys
import torch
from utils import tune_malloc
if sys.argv[1] == 'tuned':
    assert tune_malloc()
def rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = rss_mib()
x = torch.ones(64, 2**20 // 4 * 4)  # 256 MiB, touched
del x
print(rss_mib() - before)
'''


@pytest.mark.skipif(not Path('/proc/self/statm').exists() or platform.libc_ver()[0] != 'glibc',
                    reason='needs glibc and /proc')
@pytest.mark.parametrize('mode', ['tuned', 'default'])
def test_tune_malloc_keeps_freed_memory(mode):
    """Tuned, a freed 256 MiB tensor stays in the process; by glibc's default it goes back to the kernel."""
    out = subprocess.run([sys.executable, '-c', RSS_AFTER_FREE, mode], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout
    kept = float(out.strip().splitlines()[-1])
    assert kept > 200 if mode == 'tuned' else kept < 50


@pytest.mark.parametrize('text, where, says', [
    ('dataset:\n  train:\n    roots: [a, b\n', '4:1', "expected ',' or ']'"),  # the list opened at 3:12
    ('training:\n  epochs: 3\n max_iters: 5\n', '3:2', 'expected <block end>'),
    ('global:\n  name: "run\n', '3:1', 'unexpected end of stream'),
])
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, text, where, says):
    path = tmp_path / 'c.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Config(path)
    message = str(info.value)
    assert message.startswith(f'{path}:{where}: YAML error: ') and says in message and '\n' not in message


def test_config_that_is_not_text_or_not_a_file_is_one_line(tmp_path):
    (tmp_path / 'bin.yaml').write_bytes(b'\xff\xfe\x00binary')
    with pytest.raises(ConfigError, match='not a UTF-8 text file'):
        Config(tmp_path / 'bin.yaml')
    with pytest.raises(ConfigError, match='is a folder'):
        Config(tmp_path)


def test_writable_check_creates_nothing_and_names_the_folder(tmp_path):
    check_writable(tmp_path)
    check_writable(tmp_path / 'a' / 'b')  # the nearest existing parent is writable
    assert list(tmp_path.iterdir()) == []
    (tmp_path / 'file').write_text('x')
    with pytest.raises(WorkdirError, match=f'{tmp_path / "file" / "run"}: {tmp_path / "file"} is not a folder'):
        check_writable(tmp_path / 'file' / 'run')
    if os.geteuid() == 0:  # permission bits do not stop root; sysfs takes no new file from anyone
        unwritable = Path('/sys')
    else:
        unwritable = tmp_path / 'ro'
        unwritable.mkdir(mode=0o555)
    with pytest.raises(WorkdirError, match=f'work directory {unwritable / "w"} is not writable'):
        check_writable(unwritable / 'w')
