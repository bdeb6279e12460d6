"""tools/export_onnx.py: the ONNX graph run by onnxruntime matches PyTorch on a batch size it was not exported
with, and the command line exports a ConCLR checkpoint."""

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml

from configuration import Config
from modules.model_conclr import ConCLR_Vision
from modules.model_vision import BaseVision
from runtime.checkpoint import save_checkpoint
from tests.helpers import randomise
from tools import export_onnx

REPO = Path(__file__).resolve().parents[2]
VISION = {'resnet_widths': [4, 8, 8, 16, 16], 'resnet_layers': [1, 1, 1, 1, 1], 'd_model': 16, 'nhead': 2,
          'd_inner': 32, 'backbone_ln': 1, 'attention_channels': 8}


def write_config(tmp_path: Path, conclr: bool = False, **vision) -> Path:
    """A tiny BaseVision (or ConCLR) config with `model.vision` overrides."""
    model = {'vision': {**VISION, **vision}}
    if conclr:
        model = {'name': 'modules.model_conclr.ConCLR_Vision',
                 'vision': {**VISION, 'loss_weight': [1.0, 0.5, 0.5]}, 'projection': {'channels': 8}}
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump({'dataset': {'max_length': 5, 'charset_path': str(REPO / 'data' /
                                                                                    'charset_36.txt')},
                                    'model': model}))
    return path


@pytest.mark.parametrize('vision', [{}, {'attention': 'attention'}, {'backbone': 'resnet'}])
def test_onnx_matches_pytorch_on_another_batch_size(tmp_path, vision):
    model = randomise(BaseVision(Config(write_config(tmp_path, **vision))))
    path = export_onnx.export_onnx(model, tmp_path / 'm.onnx', (32, 128), batch_size=2)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ['images']
    assert [o.name for o in graph.output] == ['logits', 'attn_scores', 'pt_lengths']
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis, not a fixed size

    images = torch.randn(5, 3, 32, 128, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    logits, attn, lengths = session.run(None, {'images': images.numpy()})
    with torch.no_grad():
        ref = model(images)
    assert logits.shape == (5, 6, 37) and attn.shape == (5, 6, 8, 32)
    np.testing.assert_allclose(logits, ref['logits'].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(attn, ref['attn_scores'].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(lengths, ref['pt_lengths'].numpy())
    assert model.training is False and torch.backends.mha.get_fastpath_enabled()


def test_check_onnx_reports_small_differences(tmp_path):
    model = randomise(BaseVision(Config(write_config(tmp_path))), seed=3)
    path = export_onnx.export_onnx(model, tmp_path / 'm.onnx', (32, 128))
    diffs = export_onnx.check_onnx(model, path, (32, 128), batch_size=4)
    assert set(diffs) == {'logits', 'attn_scores', 'pt_lengths'}
    assert diffs['logits'] < 1e-4 and diffs['pt_lengths'] == 0
    with torch.no_grad():  # a different model must show up as a large difference
        model.cls.bias.add_(1.0)
    assert export_onnx.check_onnx(model, path, (32, 128))['logits'] > 0.5


def test_command_line_exports_a_conclr_checkpoint(tmp_path, capsys):
    conclr = randomise(ConCLR_Vision(Config(write_config(tmp_path, conclr=True))))
    checkpoint = save_checkpoint(tmp_path / 'conclr.pth', conclr)
    status = export_onnx.main(['--config', str(write_config(tmp_path, conclr=True)), '--checkpoint',
                               str(checkpoint), '--output', str(tmp_path / 'out' / 'conclr.onnx'), '--check'])
    out = capsys.readouterr().out
    assert status == 0, out
    assert (tmp_path / 'out' / 'conclr.onnx').is_file()
    found = dict(re.findall(r'(logits|attn_scores|pt_lengths) ([0-9.e+-]+)', out.splitlines()[-1]))
    assert set(found) == {'logits', 'attn_scores', 'pt_lengths'} and float(found['logits']) < 1e-4
    weights = {i.name for i in onnx.load(str(tmp_path / 'out' / 'conclr.onnx')).graph.initializer}
    assert not any('projection_head' in name for name in weights)

    status = export_onnx.main(['--config', str(write_config(tmp_path)), '--checkpoint', str(tmp_path / 'no.pth'),
                               '--output', str(tmp_path / 'x.onnx')])
    assert status != 0 and 'not found' in capsys.readouterr().err


def test_check_line_compares_each_output_relative_to_its_largest_value():
    compared = {'logits': (2e-4, 10.0), 'attn_scores': (5e-5, 1.0), 'pt_lengths': (0.0, 26.0)}
    ok, line = export_onnx.check_line(compared, tolerance=1e-4)
    # relative: logits 2e-4 / 10 = 2e-5, attn_scores 5e-5 / 1 = 5e-5 (the largest), pt_lengths 0
    assert ok and line.endswith('largest relative 5e-05 (attn_scores), tolerance 0.0001: OK')
    ok, line = export_onnx.check_line({**compared, 'pt_lengths': (1.0, 26.0)}, tolerance=1e-4)
    assert not ok and 'largest relative 0.0385 (pt_lengths)' in line and line.endswith('FAILED')
    assert export_onnx.relative_differences({'zeros': (3e-7, 0.0)}) == {'zeros': 3e-7}


def test_check_above_the_tolerance_fails_with_one_line(tmp_path, capsys, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / 'vision.pth', randomise(BaseVision(Config(write_config(tmp_path)))))
    run_onnx = export_onnx.run_onnx

    def off_by_a_little(path, images):  # an exported graph whose attention is slightly wrong
        outputs = run_onnx(path, images)
        outputs['attn_scores'] = outputs['attn_scores'] * 1.01
        return outputs

    monkeypatch.setattr(export_onnx, 'run_onnx', off_by_a_little)
    args = ['--config', str(write_config(tmp_path)), '--checkpoint', str(checkpoint), '--output',
            str(tmp_path / 'm.onnx'), '--check']
    assert export_onnx.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {tmp_path / "m.onnx"} does not match PyTorch within the tolerance (largest '
                          'relative ') and '(attn_scores), tolerance 0.0001: FAILED)' in err and '\n' not in err
    assert export_onnx.main([*args, '--tolerance', '0.02']) == 0  # a looser tolerance accepts the 1 % error
