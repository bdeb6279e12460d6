"""tools.benchmark.official imports an ABINet checkout beside the project without disturbing the project's modules."""

import os
import sys

import pytest
import torch

import modules.model_vision as project_model_vision
from tools.benchmark.official import load_official, official_step

FAKE = {
    'utils.py': ('class Config:\n'
                 '    def __init__(self, path):\n'
                 '        assert open("configs/template.yaml").read() == "template"  # read from the checkout\n'
                 '        self.path = path\n'),
    'losses.py': ('import torch\n'
                  'class MultiLosses(torch.nn.Module):\n'
                  '    def __init__(self, one_hot):\n'
                  '        super().__init__()\n'
                  '    def forward(self, out, labels, lengths):\n'
                  '        return (out["logits"] - labels).square().mean()\n'),
    'modules/__init__.py': '',
    'modules/model_vision.py': ('import torch\n'
                                'class BaseVision(torch.nn.Module):\n'
                                '    def __init__(self, config):\n'
                                '        super().__init__()\n'
                                '        self.config = config\n'
                                '        self.w = torch.nn.Parameter(torch.ones(()))\n'
                                '    def forward(self, x):\n'
                                '        return {"logits": x * self.w}\n'),
    'configs/template.yaml': 'template',
}


@pytest.fixture
def checkout(tmp_path):
    for name, text in FAKE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_official_modules_load_and_the_project_keeps_its_own(checkout, tmp_path):
    cwd, path = os.getcwd(), list(sys.path)
    model, loss = load_official(checkout, 'data/charset_36.txt')
    assert type(model).__module__ == 'modules.model_vision' and type(model) is not project_model_vision.BaseVision
    assert model.config.dataset_charset_path.endswith('data/charset_36.txt')
    assert model.config.model_vision_checkpoint is None
    assert sys.modules['modules.model_vision'] is project_model_vision  # the project's entry is back
    assert os.getcwd() == cwd and sys.path == path
    x = torch.full((2, 3), 2.0)
    step = official_step(model, loss, (x, torch.zeros(2, 3), torch.ones(2)), lr=0.1)
    first, second = step(), step()
    assert second < first and model.w.item() < 1.0  # the step trains the official model


def test_a_folder_that_is_not_abinet_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match='not an ABINet checkout'):
        load_official(tmp_path, 'x.txt')
