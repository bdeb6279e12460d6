"""demo.py: every checkpoint kind, folder and wildcard input, bad files and the error exits, against a plain
reference pipeline (cv2 + numpy preprocessing, load_state_dict, loop decoding)."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import demo
from configuration import Config
from modules.model_conclr import ConCLR_Vision
from modules.model_vision import BaseVision
from runtime.checkpoint import save_checkpoint
from tests.helpers import randomise

REPO = Path(__file__).resolve().parents[1]
CHARSET = REPO / 'data' / 'charset_36.txt'
MAX_LENGTH = 5
VISION = {'resnet_widths': [4, 8, 8, 16, 16], 'resnet_layers': [1, 1, 1, 1, 1], 'd_model': 16, 'nhead': 2,
          'd_inner': 32, 'backbone_ln': 1, 'attention_channels': 8}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CAPTION, SCALE = 18, 2  # inference.pictures.attention_picture's caption band and magnification


def write_config(tmp_path: Path, conclr: bool = False, name: str = 'tiny') -> Path:
    """A tiny BaseVision (or ConCLR) config whose work directory lies in tmp_path."""
    model = {'vision': dict(VISION)}
    if conclr:
        model = {'name': 'modules.model_conclr.ConCLR_Vision',
                 'vision': {**VISION, 'loss_weight': [1.0, 0.5, 0.5]}, 'projection': {'channels': 8}}
    tree = {'global': {'name': name, 'workdir': str(tmp_path / 'workdir')},
            'dataset': {'max_length': MAX_LENGTH, 'charset_path': str(CHARSET)}, 'model': model}
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump(tree))
    return path


def seeded(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BN statistics, with a classifier that predicts words of varied length."""
    g = torch.Generator().manual_seed(seed)
    randomise(model, seed)
    with torch.no_grad():
        # Glimpses of random weights hardly differ between slots and images: centre and scale the classifier on
        # them, and lift the null class so that about 40 % of the slots end the word.
        model.eval()
        images = torch.randn(4, 3, 32, 128, generator=g)
        vecs = model(images)['feature']
        model.cls.weight.mul_(0.5 / float(vecs.std(dim=(0, 1)).mean()))
        model.cls.bias.copy_(-model.cls.weight @ vecs.mean(dim=(0, 1)))
        logits = model(images)['logits']
        model.cls.bias[0] += (logits[..., 1:].max(-1).values - logits[..., 0]).quantile(0.4)
    return model


def word_image(seed: int, width: int, height: int) -> np.ndarray:
    """A BGR picture of noise and a word, of the given size."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    cv2.putText(img, 'ab%d' % seed, (2, height - 5), cv2.FONT_HERSHEY_SIMPLEX, height / 30, (255, 255, 255), 2)
    return img


def image_folder(folder: Path) -> list[Path]:
    """Three images (PNG and JPEG, different sizes) in a folder; returned in name order."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / 'b_word.png', folder / 'a_word.jpg', folder / 'c.png']
    for k, (path, size) in enumerate(zip(files, [(100, 30), (60, 40), (200, 50)])):
        assert cv2.imwrite(str(path), word_image(k, *size))
    return sorted(files)


def reference(model: torch.nn.Module, paths: list[Path]) -> list[tuple[str, str]]:
    """(prediction, confidence string) per image: cv2 read, bilinear resize, numpy normalisation, loop decoding."""
    chars = [''] + [line.split('\t')[1] for line in CHARSET.read_text().splitlines() if line]
    batch = []
    for p in paths:
        rgb = cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1]
        small = cv2.resize(np.ascontiguousarray(rgb), (128, 32), interpolation=cv2.INTER_LINEAR)
        batch.append(((small.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1))
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(np.stack(batch))))['logits'].double()
    out = []
    for row in logits:
        probs = torch.softmax(row, dim=-1)
        text, conf = '', 1.0
        for slot in probs:
            label = int(slot.argmax())
            conf *= float(slot.max())
            if label == 0:
                break
            text += chars[label]
        out.append((text, f'{conf:.4f}'))
    return out


def run(argv: list[str], capsys) -> tuple[int, list[str], list[str]]:
    """demo.main in-process: exit status, stdout lines, stderr lines."""
    status = demo.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err.splitlines()


def expected_picture_shape(text: str) -> tuple[int, int, int]:
    """Input row plus one row per predicted character and the end slot (at most max_length + 1 slots)."""
    slots = min(len(text) + 1, MAX_LENGTH + 1)
    return (1 + slots) * (CAPTION + 32 * SCALE), 128 * SCALE, 3


def checkpoint_of_kind(kind: str, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A checkpoint file of the given kind and the model whose weights it holds."""
    config = Config(write_config(tmp_path, conclr=kind == 'conclr', name=f'src_{kind}'))
    model = seeded(ConCLR_Vision(config) if kind == 'conclr' else BaseVision(config))
    path = tmp_path / f'{kind}.pth'
    state = model.state_dict()
    if kind == 'official':
        torch.save({'model': state, 'opt': {'state': {}, 'param_groups': []}}, path)
    elif kind == 'full_abinet':
        weights = {f'vision.{k}': v for k, v in state.items()}
        weights['language.proj.weight'] = torch.zeros(2, 2)
        weights['alignment.w_att.weight'] = torch.zeros(2, 2)
        torch.save({'model': weights, 'opt': None}, path)
    else:
        save_checkpoint(path, model, iteration=7)
    return path, model


@pytest.mark.parametrize('kind', ['official', 'full_abinet', 'base_vision', 'conclr'])
@pytest.mark.parametrize('conclr_config', [False, True])
def test_demo_folder_every_checkpoint_kind(tmp_path, capsys, kind, conclr_config):
    files = image_folder(tmp_path / 'imgs')
    checkpoint, source = checkpoint_of_kind(kind, tmp_path)
    config = write_config(tmp_path, conclr=conclr_config)
    status, out, err = run(['--config', config, '--input', tmp_path / 'imgs', '--checkpoint', checkpoint], capsys)
    assert status == 0, err
    expected = reference(source, files)
    assert [line.split('\t') for line in out] == [[str(f), text, conf] for f, (text, conf) in zip(files, expected)]
    folder = tmp_path / 'workdir' / 'tiny' / 'demo'  # default: <global.workdir>/<global.name>/demo
    assert sorted(p.name for p in folder.iterdir()) == sorted(f'{f.stem}.png' for f in files)
    for f, (text, _) in zip(files, expected):
        assert cv2.imread(str(folder / f'{f.stem}.png')).shape == expected_picture_shape(text)
    assert str(folder) in err[-1]


def test_demo_predictions_vary(tmp_path):
    """The seeded test model is not degenerate: the reference reads words of different lengths."""
    files = image_folder(tmp_path / 'imgs')
    _, source = checkpoint_of_kind('base_vision', tmp_path)
    texts = [t for t, _ in reference(source, files)]
    assert len({len(t) for t in texts}) > 1 and len(set(texts)) > 1


def test_demo_wildcard_image_only_and_output(tmp_path, capsys):
    files = image_folder(tmp_path / 'imgs')
    (tmp_path / 'imgs' / 'notes.txt').write_text('not an image')
    checkpoint, source = checkpoint_of_kind('base_vision', tmp_path)
    config = write_config(tmp_path)
    pngs = [f for f in files if f.suffix == '.png']
    status, out, err = run(['--config', config, '--input', tmp_path / 'imgs' / '*.png', '--checkpoint', checkpoint,
                            '--image_only'], capsys)
    assert status == 0, err
    assert [line.split('\t')[0] for line in out] == [str(f) for f in pngs]
    assert [line.split('\t')[1:] for line in out] == [list(r) for r in reference(source, pngs)]
    assert not (tmp_path / 'workdir').exists()  # --image_only writes nothing
    status, out, err = run(['--config', config, '--input', tmp_path / 'imgs' / '*_word.*', '--checkpoint',
                            checkpoint, '--output', tmp_path / 'pics', '--batch_size', '1'], capsys)
    assert status == 0, err
    assert [line.split('\t')[0] for line in out] == [str(tmp_path / 'imgs' / n) for n in ('a_word.jpg', 'b_word.png')]
    assert sorted(p.name for p in (tmp_path / 'pics').iterdir()) == ['a_word.png', 'b_word.png']


def test_demo_warns_about_bad_files_and_keeps_going(tmp_path, capsys):
    files = image_folder(tmp_path / 'imgs')
    (tmp_path / 'imgs' / 'notes.txt').write_text('hello')
    ok, jpeg = cv2.imencode('.jpg', word_image(5, 120, 40))
    (tmp_path / 'imgs' / 'broken.jpg').write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    checkpoint, _ = checkpoint_of_kind('base_vision', tmp_path)
    status, out, err = run(['--config', write_config(tmp_path), '--input', tmp_path / 'imgs', '--checkpoint',
                            checkpoint, '--output', tmp_path / 'pics'], capsys)
    assert status == 0, err
    assert [line.split('\t')[0] for line in out] == [str(f) for f in files]
    warnings = [line for line in err if line.startswith('warning')]
    assert len(warnings) == 2
    assert 'broken.jpg' in warnings[0] and 'notes.txt' in warnings[1]
    assert len(err) == 3  # the two warnings and the line naming the picture folder, no OpenCV chatter
    assert len(list((tmp_path / 'pics').iterdir())) == len(files)


def test_demo_same_stem_gets_distinct_picture_names(tmp_path, capsys):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for name in ('x.png', 'x.jpg'):
        cv2.imwrite(str(folder / name), word_image(1, 80, 32))
    checkpoint, _ = checkpoint_of_kind('base_vision', tmp_path)
    status, out, _ = run(['--config', write_config(tmp_path), '--input', folder, '--checkpoint', checkpoint,
                          '--output', tmp_path / 'pics'], capsys)
    assert status == 0 and len(out) == 2
    assert sorted(p.name for p in (tmp_path / 'pics').iterdir()) == ['x.png', 'x_1.png']


def test_demo_errors(tmp_path, capsys):
    config = write_config(tmp_path)
    checkpoint, _ = checkpoint_of_kind('official', tmp_path)
    (tmp_path / 'text_only').mkdir()
    (tmp_path / 'text_only' / 'a.txt').write_text('x')
    (tmp_path / 'empty').mkdir()
    image_folder(tmp_path / 'imgs')

    status, out, err = run(['--config', config, '--input', tmp_path / 'text_only', '--checkpoint', checkpoint],
                           capsys)
    assert status != 0 and out == []
    assert 'a.txt' in err[0] and err[-1].startswith('error: no readable image')

    for bad_input in (tmp_path / 'empty', tmp_path / 'nothing*.png', tmp_path / 'missing_dir'):
        status, _, err = run(['--config', config, '--input', bad_input, '--checkpoint', checkpoint], capsys)
        assert status != 0 and len(err) == 1 and err[0].startswith('error:'), (bad_input, err)

    status, out, err = run(['--config', config, '--input', tmp_path / 'imgs'], capsys)
    best = tmp_path / 'workdir' / 'tiny' / 'best-tiny.pth'  # <global.workdir>/<global.name>/best-<global.name>.pth
    assert status != 0 and out == [] and len(err) == 1 and '--checkpoint' in err[0] and str(best) in err[0]

    status, _, err = run(['--config', config, '--input', tmp_path / 'imgs', '--checkpoint', tmp_path / 'no.pth'],
                         capsys)
    assert status != 0 and len(err) == 1 and 'not found' in err[0]

    status, _, err = run(['--config', config, '--input', tmp_path / 'imgs', '--checkpoint', checkpoint,
                          '--model_eval', 'alignment'], capsys)
    assert status != 0 and len(err) == 1 and "only 'vision'" in err[0]

    if not torch.cuda.is_available():
        status, _, err = run(['--config', config, '--input', tmp_path / 'imgs', '--checkpoint', checkpoint,
                              '--cuda', '0'], capsys)
        assert status != 0 and len(err) == 1 and 'no CUDA device' in err[0]


def test_demo_without_checkpoint_uses_the_runs_best(tmp_path, capsys):
    files = image_folder(tmp_path / 'imgs')
    _, source = checkpoint_of_kind('conclr', tmp_path)
    best = tmp_path / 'workdir' / 'tiny' / 'best-tiny.pth'
    save_checkpoint(best, source, iteration=3)
    status, out, err = run(['--config', write_config(tmp_path, conclr=True), '--input', tmp_path / 'imgs',
                            '--image_only'], capsys)
    assert status == 0, err
    assert [line.split('\t')[1:] for line in out] == [list(r) for r in reference(source, files)]
    notes = [line for line in err if line.startswith('note:')]
    assert len(notes) == 2 and str(best) in notes[0] and 'left out' in notes[1]


def test_demo_checkpoint_that_does_not_fit(tmp_path, capsys):
    image_folder(tmp_path / 'imgs')
    config = Config(write_config(tmp_path))
    state = seeded(BaseVision(config)).state_dict()
    del state['cls.weight']
    torch.save({'model': state, 'opt': None}, tmp_path / 'partial.pth')
    status, out, err = run(['--config', write_config(tmp_path), '--input', tmp_path / 'imgs', '--checkpoint',
                            tmp_path / 'partial.pth'], capsys)
    assert status != 0 and out == []
    assert len(err) == 1 and err[0].startswith('error:') and 'cls.weight' in err[0]

    wider = {**VISION, 'resnet_widths': [4, 8, 8, 16, 24], 'd_model': 24}
    other = tmp_path / 'wide.yaml'
    other.write_text(yaml.safe_dump({'dataset': {'max_length': MAX_LENGTH}, 'model': {'vision': wider}}))
    wide_state = BaseVision(Config(other)).state_dict()
    torch.save({'model': wide_state}, tmp_path / 'wide.pth')
    status, _, err = run(['--config', write_config(tmp_path), '--input', tmp_path / 'imgs', '--checkpoint',
                          tmp_path / 'wide.pth'], capsys)
    first = sorted(k for k, v in state.items() if k in wide_state and wide_state[k].shape != v.shape)[0]
    assert status != 0 and len(err) == 1 and 'shape mismatch' in err[0] and first in err[0]


def test_demo_command_line(tmp_path):
    files = image_folder(tmp_path / 'imgs')
    checkpoint, source = checkpoint_of_kind('conclr', tmp_path)
    result = subprocess.run([sys.executable, str(REPO / 'demo.py'), f'--config={write_config(tmp_path)}',
                             f'--input={tmp_path / "imgs"}', f'--checkpoint={checkpoint}', '--cuda', '-1'],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = [f'{f}\t{text}\t{conf}' for f, (text, conf) in zip(files, reference(source, files))]
    assert result.stdout.splitlines() == expected
    assert len(list((tmp_path / 'workdir' / 'tiny' / 'demo').glob('*.png'))) == len(files)
