"""inference/onnx_backend.py: ONNX Runtime reads as PyTorch does (same words, logits within 1e-4) through demo.py and
the test phase; the cache is reused, rebuilt when stale or corrupt, and falls back to a per-user folder; a missing
onnxruntime, a failed export and an operator ORT cannot run each end in one line while PyTorch still works."""

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import demo
import main
from configuration import REPO_ROOT, Config
from inference import onnx_backend
from inference.loading import load_inference_model
from modules.model_vision import BaseVision
from runtime.checkpoint import save_checkpoint
from tests.helpers import WORDS, render_lmdb, write_config
from tests.test_demo import image_folder, seeded
from tests.test_demo import write_config as demo_config
from tools.synth.fonts import find_fonts
from tools.synth.plain import render_word

VISION = {'resnet_widths': [4, 8, 8, 16, 16], 'resnet_layers': [1, 1, 1, 1, 1], 'd_model': 16, 'nhead': 2,
          'd_inner': 32, 'backbone_ln': 1, 'attention_channels': 8}


@pytest.fixture
def tiny(tmp_path):
    """(config path, checkpoint, the PyTorch model it holds) of a seeded tiny BaseVision."""
    config_path = demo_config(tmp_path)
    model = seeded(BaseVision(Config(config_path)))
    checkpoint = save_checkpoint(tmp_path / 'ckpt' / 'tiny.pth', model)
    return config_path, checkpoint, model


def build(config_path, checkpoint, quantize=None, lines=None):
    config = Config(config_path)
    model = load_inference_model(config, [str(checkpoint)])
    return onnx_backend.onnx_model(model, config, [str(checkpoint)], quantize,
                                   log=(lines.append if lines is not None else None))


def cached_graphs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob('*.ort-*.onnx'))


def rendered_batch(n: int = 12) -> torch.Tensor:
    """Rendered words, normalised as the data pipeline does."""
    rng = np.random.default_rng(0)
    fonts = find_fonts()[:4]
    images = [cv2.resize(render_word(WORDS[i % len(WORDS)], fonts[i % len(fonts)], rng), (128, 32))
              for i in range(n)]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    batch = np.stack([((im.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1) for im in images])
    return torch.from_numpy(batch.astype(np.float32))


# ------------------------------------------------------------------------------------------------ parity


def test_float32_graph_gives_pytorchs_logits_and_words_on_rendered_words(tiny):
    config_path, checkpoint, model = tiny
    ort = build(config_path, checkpoint)
    images = rendered_batch()
    with torch.no_grad():
        ref = model.eval()(images)
    got = ort(images)
    assert got['logits'].shape == ref['logits'].shape
    # float32 kernels of another library: 1.1e-4 absolute on logits up to 15 (7e-6 of the largest), the same with
    # ORT's graph optimisations off; the bound is 1e-4 of the largest logit, as tools.export_onnx --check uses
    scale = float(ref['logits'].abs().max())
    assert float((got['logits'] - ref['logits']).abs().max()) < 1e-4 * scale
    assert torch.equal(got['pt_lengths'], ref['pt_lengths'])
    assert float((got['attn_scores'] - ref['attn_scores']).abs().max()) < 1e-5
    assert len({tuple(row) for row in ref["logits"].argmax(-1).tolist()}) > 1  # not a constant reader


def test_test_phase_with_onnxruntime_writes_pytorchs_predictions_and_table(tmp_path, capsys):
    root = render_lmdb(tmp_path / 'rendered', 20, seed=5)
    config_path = write_config(tmp_path / 'test.yaml', **{
        'global': {'name': 'run', 'workdir': str(tmp_path / 'workdir')},
        'dataset': {'test': {'roots': [str(root)], 'batch_size': 8}, 'num_workers': 0, 'max_length': 5,
                    'charset_path': str(REPO_ROOT / 'data' / 'charset_36.txt')},
        'model': {'vision': VISION}})
    checkpoint = save_checkpoint(tmp_path / 'ckpt.pth', seeded(BaseVision(Config(config_path))))
    results = {}
    for backend in ('pytorch', 'onnxruntime'):
        status = main.main(['--config', str(config_path), '--phase', 'test', '--checkpoint', str(checkpoint),
                            '--image_only', '--backend', backend, '--name', backend])
        assert status == 0, capsys.readouterr().err
        workdir = tmp_path / 'workdir' / backend
        predictions = (workdir / 'predictions' / 'rendered.tsv').read_text().splitlines()
        rows = list(csv.DictReader(open(workdir / 'test_results.csv')))
        results[backend] = ([line.split('\t')[:3] for line in predictions], rows)
    assert results['onnxruntime'][0] == results['pytorch'][0]
    assert len({p[2] for p in results['pytorch'][0][1:]}) > 1  # the seeded model reads different words
    torch_row, ort_row = results['pytorch'][1][0], results['onnxruntime'][1][0]
    assert ort_row['cwr'] == torch_row['cwr'] and ort_row['ccr'] == torch_row['ccr']
    assert float(ort_row['eval loss']) == pytest.approx(float(torch_row['eval loss']), abs=1e-4)
    assert 'in ONNX Runtime' in (tmp_path / 'workdir' / 'onnxruntime' / 'test.txt').read_text()
    assert cached_graphs(tmp_path) and not cached_graphs(root)
    # int8 runs through the same path and writes a table of the same shape
    assert main.main(['--config', str(config_path), '--phase', 'test', '--checkpoint', str(checkpoint), '--image_only',
                      '--backend', 'onnxruntime', '--quantize', 'int8', '--name', 'int8']) == 0
    rows = list(csv.DictReader(open(tmp_path / 'workdir' / 'int8' / 'test_results.csv')))
    assert [r['dataset'] for r in rows] == ['rendered'] and rows[0]['samples'] == torch_row['samples']
    assert 'in ONNX Runtime (int8)' in (tmp_path / 'workdir' / 'int8' / 'test.txt').read_text()
    assert len(cached_graphs(tmp_path)) == 2


def test_demo_prints_the_same_with_either_backend(tmp_path, capsys):
    files = image_folder(tmp_path / 'imgs')
    config = demo_config(tmp_path)
    checkpoint = save_checkpoint(tmp_path / 'tiny.pth', seeded(BaseVision(Config(config))))
    printed = {}
    for backend in ('pytorch', 'onnxruntime', 'onnxruntime'):
        status = demo.main([f'--config={config}', f'--input={tmp_path / "imgs"}', f'--checkpoint={checkpoint}',
                            '--image_only', '--backend', backend])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        printed.setdefault(backend, []).append((captured.out, captured.err))
    assert len(printed['pytorch'][0][0].splitlines()) == len(files)
    assert printed['onnxruntime'][0][0] == printed['onnxruntime'][1][0] == printed['pytorch'][0][0]
    assert 'exported graph' in printed['onnxruntime'][0][1] and 'cached graph' in printed['onnxruntime'][1][1]
    # int8 is a separate cache entry and still prints one line per image
    assert demo.main([f'--config={config}', f'--input={tmp_path / "imgs"}', f'--checkpoint={checkpoint}',
                      '--image_only', '--backend', 'onnxruntime', '--quantize', 'int8']) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(files)
    assert len(cached_graphs(tmp_path)) == 2


# ------------------------------------------------------------------------------------------------ the cache


def test_cache_is_reused_and_keyed(tiny, monkeypatch):
    config_path, checkpoint, _ = tiny
    lines = []
    first = build(config_path, checkpoint, lines=lines)
    names = cached_graphs(checkpoint.parent)
    assert len(names) == 1 and names[0].startswith('tiny.ort-')
    sidecar = json.loads(first.path.with_suffix('.json').read_text())
    assert sidecar['key']['checkpoints_sha256'] == [onnx_backend.file_sha256(checkpoint)]
    assert sidecar['key']['opset'] == 17 and sidecar['key']['quantize'] is None

    def no_export(*args, **kwargs):
        raise AssertionError('exported again')

    monkeypatch.setattr(onnx_backend, 'export_onnx', no_export)
    second = build(config_path, checkpoint, lines=lines)
    assert second.path == first.path and lines[-1].endswith(f'using the cached graph {first.path}')


def test_new_weights_get_a_new_cache_entry(tiny):
    config_path, checkpoint, model = tiny
    first = build(config_path, checkpoint)
    with torch.no_grad():
        model.cls.bias.add_(1.0)
    save_checkpoint(checkpoint, model)
    second = build(config_path, checkpoint)
    assert second.path != first.path
    images = rendered_batch(4)
    with torch.no_grad():
        ref = model(images)['logits']
    assert float((second(images)['logits'] - ref).abs().max()) < 1e-4 * float(ref.abs().max())


@pytest.mark.parametrize('damage', ['truncated graph', 'garbage graph with a matching sidecar', 'stale key',
                                    'sidecar missing', 'sidecar not JSON'])
def test_a_damaged_or_stale_cache_is_rebuilt(tiny, damage):
    config_path, checkpoint, model = tiny
    good = build(config_path, checkpoint)
    graph, sidecar = good.path, good.path.with_suffix('.json')
    meta = json.loads(sidecar.read_text())
    if damage == 'truncated graph':
        graph.write_bytes(graph.read_bytes()[:200])
    elif damage == 'garbage graph with a matching sidecar':
        graph.write_bytes(b'not an onnx graph' * 10)
        sidecar.write_text(json.dumps({**meta, 'onnx_sha256': onnx_backend.file_sha256(graph)}))
    elif damage == 'stale key':
        sidecar.write_text(json.dumps({**meta, 'key': {**meta['key'], 'opset': 13}}))
    elif damage == 'sidecar missing':
        sidecar.unlink()
    else:
        sidecar.write_text('{')
    lines = []
    rebuilt = build(config_path, checkpoint, lines=lines)
    assert rebuilt.path == graph and lines[-1].endswith(f'exported graph {graph}')
    assert json.loads(sidecar.read_text())['onnx_sha256'] == onnx_backend.file_sha256(graph)
    images = rendered_batch(4)
    with torch.no_grad():
        ref = model(images)['logits']
    assert float((rebuilt(images)['logits'] - ref).abs().max()) < 1e-4 * float(ref.abs().max())


def test_read_only_checkpoint_folder_falls_back_to_the_user_cache(tiny, tmp_path, monkeypatch):
    config_path, checkpoint, _ = tiny
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'user_cache'))
    real = onnx_backend.can_write
    monkeypatch.setattr(onnx_backend, 'can_write', lambda folder: folder != checkpoint.parent and real(folder))
    lines = []
    ort = build(config_path, checkpoint, lines=lines)
    user = tmp_path / 'user_cache' / 'conclr-abinet' / 'onnx'
    assert ort.path.parent == user and not cached_graphs(checkpoint.parent)
    assert sum('not writable' in line for line in lines) == 1
    assert str(checkpoint.parent) in lines[0] and str(user) in lines[0]
    lines.clear()
    assert build(config_path, checkpoint, lines=lines).path == ort.path and 'cached graph' in lines[-1]


def test_nowhere_to_write_is_one_line(tiny, monkeypatch):
    config_path, checkpoint, _ = tiny
    monkeypatch.setattr(onnx_backend, 'can_write', lambda folder: False)
    with pytest.raises(onnx_backend.OnnxBackendError, match='neither .* nor .* is writable'):
        build(config_path, checkpoint)


def test_threads_follow_torch(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert onnx_backend.session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(threads)
    assert onnx_backend.session_options(3).intra_op_num_threads == 3


# ------------------------------------------------------------------------------------------------ failures


def demo_argv(tmp_path, checkpoint, config, *extra):
    return [f'--config={config}', f'--input={tmp_path / "imgs"}', f'--checkpoint={checkpoint}', '--image_only',
            *extra]


def unknown_op_graph(model, output, image_size, opset=17, batch_size=2):
    """An 'export' whose graph holds an operator no ORT build has."""
    node = helper.make_node('NoSuchOp', ['images'], ['logits', 'attn_scores', 'pt_lengths'], domain='com.example')
    graph = helper.make_graph([node], 'g', [helper.make_tensor_value_info('images', TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in ('logits', 'attn_scores', 'pt_lengths')])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset),
                                                      helper.make_opsetid('com.example', 1)]), str(output))
    return Path(output)


def failing_export(*args, **kwargs):
    raise RuntimeError('Exporting the operator aten::frobnicate to ONNX is not supported\nmore detail')


@pytest.mark.parametrize('failure, message', [
    ('missing onnxruntime', 'onnxruntime is not installed'),
    ('export fails', 'exporting the model to ONNX failed: RuntimeError: Exporting the operator aten::frobnicate'),
    ('unknown operator', 'ONNX Runtime cannot load the exported graph'),
])
def test_failures_are_one_line_and_pytorch_still_works(tmp_path, capsys, monkeypatch, failure, message):
    image_folder(tmp_path / 'imgs')
    config = demo_config(tmp_path)
    checkpoint = save_checkpoint(tmp_path / 'tiny.pth', seeded(BaseVision(Config(config))))
    if failure == 'missing onnxruntime':
        monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime raises ImportError
    elif failure == 'export fails':
        monkeypatch.setattr(onnx_backend, 'export_onnx', failing_export)
    else:
        monkeypatch.setattr(onnx_backend, 'export_onnx', unknown_op_graph)
    status = demo.main(demo_argv(tmp_path, checkpoint, config, '--backend', 'onnxruntime'))
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ''
    errors = captured.err.splitlines()
    assert len(errors) == 1 and errors[0].startswith('error: ') and message in errors[0], errors
    assert not cached_graphs(tmp_path)  # nothing half-built is left to be trusted later
    assert demo.main(demo_argv(tmp_path, checkpoint, config)) == 0  # the PyTorch backend still works
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_test_phase_failure_is_one_line(tmp_path, capsys, monkeypatch):
    root = render_lmdb(tmp_path / 'rendered', 4, seed=5)
    config_path = write_config(tmp_path / 'test.yaml', **{
        'global': {'name': 'run', 'workdir': str(tmp_path / 'workdir')},
        'dataset': {'test': {'roots': [str(root)]}, 'num_workers': 0, 'max_length': 5,
                    'charset_path': str(REPO_ROOT / 'data' / 'charset_36.txt')},
        'model': {'vision': VISION}})
    checkpoint = save_checkpoint(tmp_path / 'ckpt.pth', seeded(BaseVision(Config(config_path))))
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    status = main.main(['--config', str(config_path), '--phase', 'test', '--checkpoint', str(checkpoint),
                        '--image_only', '--backend', 'onnxruntime'])
    errors = capsys.readouterr().err.splitlines()
    assert status == 2 and len(errors) == 1 and 'onnxruntime is not installed' in errors[0]


def test_flag_misuse_is_one_line(tmp_path, capsys, tiny):
    config_path, checkpoint, _ = tiny
    image_folder(tmp_path / 'imgs')
    assert demo.main(demo_argv(tmp_path, checkpoint, config_path, '--quantize', 'int8')) == 2
    assert 'needs --backend onnxruntime' in capsys.readouterr().err
    assert demo.main(demo_argv(tmp_path, checkpoint, config_path, '--backend', 'onnxruntime', '--cuda', '0')) == 2
    assert 'runs on the CPU' in capsys.readouterr().err
    assert main.main(['--config', str(config_path), '--phase', 'train', '--backend', 'onnxruntime']) == 2
    assert 'for the test phase' in capsys.readouterr().err


SAMPLES = REPO_ROOT.parent / 'shared' / 'samples' / 'abinet_demo'


@pytest.mark.skipif(not SAMPLES.is_dir(), reason='needs ../shared/samples/abinet_demo')
@pytest.mark.parametrize('model', ['abinet_vision_quarter', 'conclr_vision_quarter'])
def test_shipped_model_reads_the_demo_photographs_alike_in_both_backends(tmp_path, capsys, model):
    checkpoint = tmp_path / f'{model}.pth'  # a copy: the cache is written beside it, not into checkpoints/
    checkpoint.write_bytes((REPO_ROOT / 'checkpoints' / f'{model}.pth').read_bytes())
    printed = {}
    for backend in ('pytorch', 'onnxruntime'):
        status = demo.main([f'--config={REPO_ROOT / "checkpoints" / f"{model}.yaml"}', f'--input={SAMPLES}',
                            f'--checkpoint={checkpoint}', '--image_only', '--backend', backend])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        printed[backend] = captured.out
    assert len(printed['pytorch'].splitlines()) == len(list(SAMPLES.glob('*.png')))
    assert printed['onnxruntime'] == printed['pytorch']
