"""The ConCLR reproduction's and ABINet's config keys: a reproduction-layout file loads, each alias is translated
with one line, contradictions and unknown keys stay errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import main
from configuration import Config, ConfigError, load_yaml
from configuration.aliases import translate_aliases
from tests.helpers import REPRODUCTION_CONFIG as FIXTURE
from training.builders import build_loss

TINY = {'d_model': 16, 'nhead': 2, 'd_inner': 32, 'backbone_ln': 1, 'resnet_widths': [4, 8, 8, 16, 16],
        'resnet_layers': [1, 1, 1, 1, 1], 'attention_channels': 8}


def test_reproduction_layout_config_loads_with_the_settings_it_means():
    config = Config(FIXTURE)
    assert config.model_name == 'modules.model_conclr.ConCLR_Vision'
    assert config.conaug_side == 'batch'  # RandCat: one coin flip per view for the whole batch
    assert config.model_projection_channels == 128
    # ABINet keys keep their meaning, the tuple tag included
    assert config.dataset_train_roots == ['data/training/ST'] and config.dataset_train_batch_size == 384
    assert config.dataset_test_roots == ['data/evaluation/IIIT5k_3000', 'data/evaluation/IC13_857',
                                         'data/evaluation/CUTE80']
    assert config.optimizer_args_betas == [0.9, 0.999] and config.optimizer_scheduler_periods == [3, 1]
    assert config.optimizer_bn_wd is False and config.training_epochs == 4 and config.global_seed is None
    assert config.model_vision_loss_weight == 1.0
    # one line per translated key, naming it and what it became
    said = {}
    for line in config.translations:
        source, what = line.split(': ', 1)
        assert source == str(FIXTURE)
        alias, became = what.split(' -> ')
        said[alias.split()[0].rstrip(':')] = became
    assert len(config.translations) == len(said) == 5
    assert said['model.name'] == "'modules.model_conclr.ConCLR_Vision'"
    assert 'modules.model_conclr.ConCLR_Vision' in said['global.conclr']
    assert said['dataset.conaug_type'] == 'conaug.side: batch'
    assert said['model.embedding_channels'] == 'model.projection.channels: 128'
    assert said['dataset.one_hot_y'].startswith('nothing to change')


def test_reproduction_config_builds_the_conclr_model_with_its_head(tmp_path):
    tree = load_yaml(FIXTURE)
    tree['model']['vision'].update(TINY)
    tree['model']['embedding_channels'] = 8
    path = tmp_path / 'repro.yaml'
    path.write_text(yaml.safe_dump(tree))
    model = main.build_model(Config(path))
    assert type(model).__name__ == 'ConCLR_Vision' and main.is_conclr(model)
    assert build_loss(Config(path), conclr=True).weights == [1.0, 0.5, 0.5]  # the view weights, in the loss
    assert model.projection_head.proj[2].out_features == 8 and model.projection_head.proj[0].in_features == 16


def _with(tmp_path: Path, **edits: dict) -> Path:
    """The fixture with some sections' keys replaced (None deletes a key)."""
    tree = load_yaml(FIXTURE)
    for section, keys in edits.items():
        for key, value in keys.items():
            if value is None:
                tree[section].pop(key, None)
            else:
                tree.setdefault(section, {})[key] = value
    path = tmp_path / 'edited.yaml'
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize('edits, message', [
    ({'dataset': {'conaug_typ': 'RandCat'}}, "unknown key 'dataset_conaug_typ'"),
    ({'dataset': {'conaug_type': 'SideBySide'}}, "dataset.conaug_type 'SideBySide'"),
    ({'conaug': {'side': 'fixed'}}, 'conaug.side'),
    ({'model': {'projection': {'channels': 64}}}, 'model.projection.channels'),
    ({'model': {'embedding_channels': '128'}}, 'model.embedding_channels'),
    ({'model': {'name': 'modules.model_vision.BaseVision'}}, 'global.conclr: true'),
    ({'global': {'conclr': 'yes'}}, 'global.conclr'),
    ({'dataset': {'one_hot_y': False, 'smooth_label': True}}, 'dataset.one_hot_y: false'),
])
def test_contradictions_and_unknown_keys_are_one_line_errors(tmp_path, edits, message):
    with pytest.raises(ConfigError) as info:
        Config(_with(tmp_path, **edits))
    assert message in str(info.value) and 'edited.yaml' in str(info.value) and '\n' not in str(info.value)


def test_agreeing_keys_and_the_plain_vision_flag(tmp_path):
    config = Config(_with(tmp_path, conaug={'side': 'batch'}, model={'projection': {'channels': 128}}))
    assert config.conaug_side == 'batch' and config.model_projection_channels == 128
    plain = Config(_with(tmp_path, **{'global': {'conclr': False}, 'model': {'name': None}}))
    assert plain.model_name == 'modules.model_vision.BaseVision'  # the template's, not ConCLR
    flag_only = Config(_with(tmp_path, model={'name': None}))
    assert flag_only.model_name == 'modules.model_conclr.ConCLR_Vision'
    with pytest.raises(ConfigError, match='global.conclr: false'):
        Config(_with(tmp_path, **{'global': {'conclr': False}}))


def test_translation_leaves_the_input_alone_and_this_projects_keys_untranslated():
    values = {'dataset_conaug_type': 'RandCat', 'model_projection_channels': 32, 'conaug_side': 'batch'}
    translated, notes = translate_aliases(values, 'f.yaml')
    assert values['dataset_conaug_type'] == 'RandCat'  # the caller's dict is not modified
    assert translated == {'model_projection_channels': 32, 'conaug_side': 'batch'} and len(notes) == 1
    assert translate_aliases({'model_name': 'modules.model_vision.BaseVision'}) == \
        ({'model_name': 'modules.model_vision.BaseVision'}, [])
