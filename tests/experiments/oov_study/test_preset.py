"""oov_study/preset.py: bad presets are refused with a clear error; the shipped presets make valid project configs."""

from pathlib import Path

import pytest
import yaml

from configuration import Config
from experiments.oov_study import cli, runs
from experiments.oov_study.preset import ExperimentError, load_preset, set_nested

REPO = Path(__file__).resolve().parents[3]
PRESETS = REPO / 'experiments' / 'oov_study' / 'configs'
TINY = PRESETS / 'tiny.yaml'


def _preset(tmp_path, **changes):
    data = yaml.safe_load(TINY.read_text())
    for dotted, value in changes.items():
        set_nested(data, dotted.replace('__', '.'), value)
    path = tmp_path / 'preset.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize('changes, message', [
    ({'experiment__vocab_sise': 5}, "did you mean 'vocab_size'"),
    ({'experiment__curve_points': 6}, 'curve_points'),
    ({'experiment__sweep_seeds': 'zero'}, 'expects ints'),
    ({'experiment__min_gap': None}, 'must not be null'),
    ({'experiment__sweep_vocab_sizes': []}, 'sweep_vocab_sizes must list'),
    ({'experiment__reference': 'nothing'}, "'nothing' is not an arm"),
    ({'config__dataset__test__roots': ['x']}, 'the study sets itself'),
    ({'arms__conclr__config__training__max_iters': 5}, 'the study sets itself'),
    ({'config__optimizer__scheduler__periods': [1, 1]}, 'decay_at replaces'),
    ({'arms__conclr__seeds': [0, 0]}, 'distinct integers'),
    ({'arms__conclr__colour': 'red'}, 'only'),
    ({'config__training__max_iters': 0}, 'positive integer'),
    ({'extra': 1}, 'unknown part'),
])
def test_bad_presets_are_refused_with_a_clear_error(tmp_path, changes, message):
    with pytest.raises(ExperimentError, match=message):
        load_preset(_preset(tmp_path, **changes))


def test_a_conclr_baseline_and_an_unknown_project_key_fail_before_any_data_is_made(tmp_path, capsys):
    path = _preset(tmp_path, config__training__max_iter=5)
    assert cli.main(['--preset', str(path), '--output', str(tmp_path / 'out')]) == 2
    assert "unknown key 'training_max_iter'" in capsys.readouterr().err
    path = _preset(tmp_path, experiment__baseline='conclr', experiment__reference='abinet')
    assert cli.main(['--preset', str(path), '--output', str(tmp_path / 'out')]) == 2
    assert 'must not be a ConCLR model' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_the_fingerprint_follows_the_settings_not_the_file(tmp_path):
    same = tmp_path / 'copy.yaml'
    same.write_text(TINY.read_text() + '\n# a comment changes nothing\n')
    assert load_preset(same).fingerprint() == load_preset(TINY).fingerprint()
    assert load_preset(TINY, steps=31).fingerprint() != load_preset(TINY).fingerprint()
    assert load_preset(_preset(tmp_path, arms__conclr__seeds=[0, 1])).fingerprint() != load_preset(TINY).fingerprint()


@pytest.mark.parametrize('name', ['tiny.yaml', 'cpu.yaml', 'gpu.yaml'])
def test_presets_make_valid_project_configs(tmp_path, name):
    preset = load_preset(PRESETS / name)
    place = runs.RunPlace(tmp_path, tmp_path / 'train', (tmp_path / 'a', tmp_path / 'b'), (), (), frozenset(), 100)
    for arm in preset.arms:
        spec = runs.RunSpec(arm, 0, preset.steps, 300, preset.arm_tree(arm))
        config = Config(runs.write_run_config(spec, place, preset.experiment['curve_points'],
                                              preset.experiment['decay_at']))
        assert config.training_max_iters == preset.steps
        assert sum(config.optimizer_scheduler_periods) * 100 >= preset.steps  # the schedule does not end it early
        assert ('ConCLR' in config.model_name) == (arm != 'abinet')
        if arm == 'conaug':
            assert config.training_alpha == 0.0
    if name != 'tiny.yaml':  # the study's design: seeds and a stronger contrastive arm
        assert len(preset.arms['abinet'].seeds) >= 3 and len(preset.arms['conclr'].seeds) >= 3
        assert all(len(a.seeds) >= 2 for a in preset.arms.values())
        strong = [preset.arm_tree(a)['training'] for a in preset.arms if a.startswith('conclr_')]
        assert any(t['tau'] < 2 for t in strong)  # tau 2 caps each anchor's term within about 1 nat, any alpha
        if name == 'gpu.yaml':
            assert any(t['alpha'] >= 1 for t in strong)
