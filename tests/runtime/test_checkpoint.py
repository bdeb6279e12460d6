"""Checkpoints: atomic saving, weights_only loading, key-checked loading of ABINet and ConCLR files."""

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

import runtime.checkpoint as checkpoint
from configuration import Config
from modules.model_conclr import ConCLR_Vision
from modules.model_vision import BaseVision
from runtime.checkpoint import CheckpointError, load_checkpoint, load_weights, model_state, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
VISION = {'resnet_widths': [4, 8, 8, 16, 16], 'resnet_layers': [1, 1, 1, 1, 1], 'd_model': 16, 'nhead': 2,
          'd_inner': 32, 'backbone_ln': 1, 'attention_channels': 8}


@pytest.fixture
def config(tmp_path) -> Config:
    tree = {'dataset': {'max_length': 5, 'charset_path': str(REPO / 'data' / 'charset_36.txt')},
            'model': {'vision': VISION, 'projection': {'channels': 8}}}
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(tree))
    return Config(path)


def fresh(cls, config, seed):
    torch.manual_seed(seed)
    return cls(config)


def assert_loaded(model: torch.nn.Module, weights: dict[str, torch.Tensor], skip: str = 'projection_head.') -> None:
    sd = model.state_dict()
    for key, value in weights.items():
        if not key.startswith(skip):
            assert torch.equal(sd[key], value), key


def test_round_trip_with_weights_only(tmp_path, config):
    model = fresh(BaseVision, config, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    path = save_checkpoint(tmp_path / 'sub' / 'a.pth', model, opt, iteration=7)
    assert path == tmp_path / 'sub' / 'a.pth' and path.is_file()
    raw = torch.load(path, weights_only=True)  # readable by the safe loader as saved
    assert set(raw) == {'model', 'opt', 'iteration'} and raw['iteration'] == 7
    state = load_checkpoint(path)
    assert list(state['model']) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state['model'][key], value), key
    assert state['opt']['param_groups'][0]['lr'] == 1e-4
    assert [p.name for p in path.parent.iterdir()] == ['a.pth']  # no temp file left behind


def test_fresh_checkpoint_loads_strictly(tmp_path, config):
    src = fresh(BaseVision, config, 0)
    path = save_checkpoint(tmp_path / 'a.pth', src)
    dst = fresh(BaseVision, config, 1)
    assert not torch.equal(dst.cls.weight, src.cls.weight)
    state = load_weights(dst, path, strict=True)
    assert 'model' in state
    assert_loaded(dst, src.state_dict())


def official_optimizer_state(model: torch.nn.Module) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return opt.state_dict()


def test_official_style_checkpoint(tmp_path, config):
    src = fresh(BaseVision, config, 0)
    opt_state = official_optimizer_state(src)
    path = tmp_path / 'best-pretrain-vision-model.pth'
    torch.save({'model': src.state_dict(), 'opt': opt_state}, path)
    dst = fresh(BaseVision, config, 1)
    state = load_weights(dst, path, strict=True)
    assert_loaded(dst, src.state_dict())
    assert len(state['opt']['state']) == len(list(src.parameters()))


def test_full_abinet_checkpoint_with_prefixes(tmp_path, config):
    src = fresh(BaseVision, config, 0)
    weights = {f'vision.{k}': v for k, v in src.state_dict().items()}
    weights['language.proj.weight'] = torch.randn(4, 4)
    weights['language.model.layers.0.linear1.bias'] = torch.randn(4)
    weights['alignment.w_att.weight'] = torch.randn(4, 8)
    path = tmp_path / 'abinet.pth'
    torch.save({'model': weights, 'opt': None}, path)
    dst = fresh(BaseVision, config, 1)
    load_weights(dst, path, strict=True)
    assert_loaded(dst, src.state_dict())


def test_data_parallel_prefix_is_removed(tmp_path, config):
    src = fresh(BaseVision, config, 0)
    path = tmp_path / 'dp.pth'
    torch.save({'model': {f'module.{k}': v for k, v in src.state_dict().items()}}, path)
    dst = fresh(BaseVision, config, 1)
    load_weights(dst, path)
    assert_loaded(dst, src.state_dict())


def test_conclr_checkpoint_into_base_vision_and_back(tmp_path, config):
    conclr = fresh(ConCLR_Vision, config, 0)
    path = save_checkpoint(tmp_path / 'conclr.pth', conclr)
    base = fresh(BaseVision, config, 1)
    lines: list[str] = []
    load_weights(base, path, strict=True, log=lines.append)  # projection_head.* left over: allowed, and said
    assert_loaded(base, conclr.state_dict())
    assert len(lines) == 1 and 'left out' in lines[0]

    base_path = save_checkpoint(tmp_path / 'base.pth', base)
    target = fresh(ConCLR_Vision, config, 2)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith('projection_head.')}
    load_weights(target, base_path, strict=True, log=lines.append)  # head missing: starts fresh, and said
    assert len(lines) == 2 and 'starts fresh' in lines[1]
    assert_loaded(target, base.state_dict())
    for key, value in head_before.items():
        assert torch.equal(target.state_dict()[key], value), key


def reproduction_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict with the head under the reproduction's names, written out key by key."""
    own = model.state_dict()
    names = {'projection_head.proj.0.weight': 'projection_head.head.0.weight',
             'projection_head.proj.0.bias': 'projection_head.head.0.bias',
             'projection_head.proj.2.weight': 'projection_head.head.2.weight',
             'projection_head.proj.2.bias': 'projection_head.head.2.bias',
             'projection_head.proj.weight': 'projection_head.head.weight',
             'projection_head.proj.bias': 'projection_head.head.bias'}
    return {names.get(k, k): v.clone() for k, v in own.items()}


def linear_head_config(tmp_path) -> Config:
    tree = {'dataset': {'max_length': 5, 'charset_path': str(REPO / 'data' / 'charset_36.txt')},
            'model': {'vision': VISION, 'projection': {'channels': 8, 'head': 'linear'}}}
    path = tmp_path / 'linear.yaml'
    path.write_text(yaml.safe_dump(tree))
    return Config(path)


@pytest.mark.parametrize('head', ['mlp', 'linear'])
def test_reproduction_head_keys_load_into_the_head(tmp_path, config, head):
    config = config if head == 'mlp' else linear_head_config(tmp_path)
    src = fresh(ConCLR_Vision, config, 0)
    weights = reproduction_state(src)
    head_keys = sorted(k for k in weights if k.startswith('projection_head.'))
    if head == 'mlp':
        assert head_keys == ['projection_head.head.0.bias', 'projection_head.head.0.weight',
                             'projection_head.head.2.bias', 'projection_head.head.2.weight']
        assert weights['projection_head.head.0.weight'].shape == (16, 16)  # d_model x d_model (512 x 512 full size)
        assert weights['projection_head.head.2.weight'].shape == (8, 16)  # E x d_model
    else:
        assert head_keys == ['projection_head.head.bias', 'projection_head.head.weight']
    path = tmp_path / 'reproduction.pth'
    torch.save({'model': weights, 'opt': None}, path)
    dst = fresh(ConCLR_Vision, config, 1)
    lines: list[str] = []
    load_weights(dst, path, strict=True, log=lines.append)
    loaded = dst.state_dict()
    for key, value in weights.items():  # every tensor in place, the head under this project's names
        own_key = key.replace('projection_head.head', 'projection_head.proj')
        assert torch.equal(loaded[own_key], value), key
    assert len(lines) == 1 and 'projection_head.head.*' in lines[0] and 'projection_head.proj.*' in lines[0]
    # this project's own checkpoints keep its own names
    saved = load_checkpoint(save_checkpoint(tmp_path / 'own.pth', dst))['model']
    assert not any(k.startswith('projection_head.head') for k in saved)
    assert sorted(k for k in saved if k.startswith('projection_head.')) == \
        [k.replace('projection_head.head', 'projection_head.proj') for k in head_keys]


@pytest.mark.parametrize('rename', [
    ('projection_head.head.2.weight', 'projection_head.head.1.weight'),  # a layer index the head does not have
    ('projection_head.head.0.bias', 'projection_head.mlp.0.bias'),  # neither naming
    ('projection_head.head.2.bias', None),  # a head tensor missing
])
def test_misnamed_reproduction_head_key_is_an_error_listing_it(tmp_path, config, rename):
    old, new = rename
    weights = reproduction_state(fresh(ConCLR_Vision, config, 0))
    value = weights.pop(old)
    if new is not None:
        weights[new] = value
    path = tmp_path / 'misnamed.pth'
    torch.save({'model': weights}, path)
    dst = fresh(ConCLR_Vision, config, 1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(dst, path, strict=True)
    message = str(info.value)
    if new is not None:
        assert 'unexpected' in message and new in message
    assert 'missing' in message and old.replace('projection_head.head', 'projection_head.proj') in message
    for key, value in dst.state_dict().items():  # nothing loaded on failure
        assert torch.equal(value, before[key]), key


def test_reproduction_checkpoint_into_plain_vision_leaves_the_head_out_and_says_so(tmp_path, config):
    src = fresh(ConCLR_Vision, config, 0)
    path = tmp_path / 'reproduction.pth'
    torch.save({'model': reproduction_state(src), 'opt': None}, path)
    base = fresh(BaseVision, config, 1)
    lines: list[str] = []
    load_weights(base, path, strict=True, log=lines.append)
    assert_loaded(base, src.state_dict())
    assert len(lines) == 1 and 'left out' in lines[0] and '4 tensors' in lines[0]


def test_head_under_both_names_is_an_error(tmp_path, config):
    src = fresh(ConCLR_Vision, config, 0)
    weights = {**src.state_dict(), **reproduction_state(src)}
    path = tmp_path / 'both.pth'
    torch.save({'model': weights}, path)
    with pytest.raises(CheckpointError, match='both names'):
        load_weights(fresh(ConCLR_Vision, config, 1), path)


def test_shape_mismatch_raises_and_names_the_key(tmp_path, config):
    weights = fresh(BaseVision, config, 0).state_dict()
    weights['cls.weight'] = torch.randn(40, 16)
    path = tmp_path / 'bad.pth'
    torch.save({'model': weights}, path)
    dst = fresh(BaseVision, config, 1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match='cls.weight') as info:
        load_weights(dst, path, strict=True)
    assert 'shape' in str(info.value)
    for key, value in dst.state_dict().items():  # nothing loaded on failure
        assert torch.equal(value, before[key]), key


def test_missing_and_unexpected_keys_raise(tmp_path, config):
    weights = fresh(BaseVision, config, 0).state_dict()
    del weights['attention.project.weight']
    weights['decoder.extra.weight'] = torch.zeros(2)
    path = tmp_path / 'bad.pth'
    torch.save({'model': weights}, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(fresh(BaseVision, config, 1), path, strict=True)
    message = str(info.value)
    assert 'missing' in message and 'attention.project.weight' in message
    assert 'unexpected' in message and 'decoder.extra.weight' in message


def test_non_strict_loads_only_what_fits(tmp_path, config):
    src = fresh(BaseVision, config, 0)
    weights = src.state_dict()
    weights['cls.weight'] = torch.randn(40, 16)
    del weights['cls.bias']
    weights['decoder.extra.weight'] = torch.zeros(2)
    path = tmp_path / 'partial.pth'
    torch.save({'model': weights}, path)
    dst = fresh(BaseVision, config, 1)
    cls_before = dst.cls.weight.detach().clone(), dst.cls.bias.detach().clone()
    load_weights(dst, path, strict=False)
    assert torch.equal(dst.cls.weight, cls_before[0]) and torch.equal(dst.cls.bias, cls_before[1])
    assert_loaded(dst, {k: v for k, v in src.state_dict().items() if not k.startswith('cls.')})


class Planted:
    """Unpickling this calls open(marker, 'w'): harmless, but code execution that leaves a visible trace."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def test_planted_payload_would_run_without_weights_only(tmp_path):
    """Sanity check of the payload itself, so the refusal tests below are meaningful."""
    marker = tmp_path / 'ran'
    path = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'x': Planted(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize('fmt', ['torch_zip', 'raw_pickle'])
def test_code_executing_checkpoint_is_refused(tmp_path, config, fmt):
    marker = tmp_path / 'ran'
    path = tmp_path / 'evil.pth'
    if fmt == 'torch_zip':
        torch.save({'model': fresh(BaseVision, config, 0).state_dict(), 'opt': Planted(marker)}, path)
    else:  # a hand-made legacy pickle, no torch container around it
        path.write_bytes(pickle.dumps({'opt': Planted(marker), 'model': {}}, protocol=2))
    with pytest.raises(CheckpointError, match='(?i)pickle|code') as info:
        load_checkpoint(path)
    assert 'open' in str(info.value)  # names the refused callable
    with pytest.raises(CheckpointError):
        load_weights(fresh(BaseVision, config, 1), path)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(tmp_path, config):
    path = save_checkpoint(tmp_path / 'a.pth', fresh(BaseVision, config, 0))
    data = path.read_bytes()
    for name, content, says in (('half.pth', data[:len(data) // 2], 'truncated or damaged'),
                                ('head.pth', data[:100], 'truncated or damaged'), ('empty.pth', b'', 'is empty'),
                                ('text.pth', b'not a checkpoint\n', "a text file, not a PyTorch checkpoint (it starts "
                                                                     "with 'not a checkpoint\\n')"),
                                ('noise.pth', bytes([7, 200, 3, 250, 1, 2, 3, 4, 5]), 'the bytes 07 c8 03 fa')):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=name) as info:
            load_checkpoint(bad)
        assert says in str(info.value) and 'code' not in str(info.value)  # garbage is not reported as unsafe code
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'absent.pth')


def test_non_dict_and_non_tensor_contents_are_refused(tmp_path):
    path = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match='dict'):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match='state_dict'):
        model_state({'model': {'a': 1}})


def test_crash_mid_save_keeps_previous_file(tmp_path, config, monkeypatch):
    path = save_checkpoint(tmp_path / 'last.pth', fresh(BaseVision, config, 0))
    before = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 partial')
        raise OSError('disk full')

    monkeypatch.setattr(checkpoint.torch, 'save', crashing_save)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(path, fresh(BaseVision, config, 1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.suffix != '.yaml'] == ['last.pth']
    monkeypatch.undo()
    assert load_checkpoint(path)['model'].keys() == fresh(BaseVision, config, 2).state_dict().keys()


@pytest.mark.parametrize('umask', [0o022, 0o027, 0o077])
def test_checkpoint_files_get_the_process_umask(tmp_path, config, umask):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / f'{umask:o}.pth', fresh(BaseVision, config, 0))
        other = tmp_path / 'other.txt'
        other.write_text('x')  # what any other output of the process gets
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == other.stat().st_mode & 0o777 == 0o666 & ~umask


def test_strict_off_reports_loaded_skipped_and_initial_counts(tmp_path, config):
    weights = fresh(BaseVision, config, 0).state_dict()
    weights['cls.weight'] = torch.randn(40, 16)  # another shape: skipped
    del weights['cls.bias']  # missing: stays initial
    weights['decoder.extra.weight'] = torch.zeros(2)  # not in the model: skipped
    path = tmp_path / 'partial.pth'
    torch.save({'model': weights}, path)
    lines = []
    dst = fresh(BaseVision, config, 1)
    load_weights(dst, path, strict=False, log=lines.append)
    own = len(dst.state_dict())
    assert lines == [f"{path} loaded with strict loading off: {own - 2} of the model's {own} tensors loaded, "
                     f"2 of the checkpoint's {own} skipped (not in the model or another shape), 2 left at their "
                     'initial values']


def test_strict_off_refuses_a_checkpoint_of_which_nothing_fits(tmp_path, config):
    path = tmp_path / 'foreign.pth'
    torch.save({'model': {'encoder.weight': torch.zeros(3, 3), 'head.bias': torch.zeros(3)}}, path)
    dst = fresh(BaseVision, config, 1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(dst, path, strict=False)
    assert f'{path} does not fit the model (0 of its 2 tensors fit)' in str(info.value)
    assert 'none of its tensors belongs to this model' in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def test_checkpoint_of_another_model_size_says_so_with_counts(tmp_path, config):
    path = save_checkpoint(tmp_path / 'small.pth', fresh(BaseVision, config, 0))
    wider = yaml.safe_load(Path(config.path).read_text())
    wider['model']['vision'].update(d_model=32, d_inner=64, resnet_widths=[4, 8, 8, 16, 32])
    (tmp_path / 'wider.yaml').write_text(yaml.safe_dump(wider))
    target = BaseVision(Config(tmp_path / 'wider.yaml'))
    small, big = load_checkpoint(path)['model'], target.state_dict()
    other_shape = sorted(k for k in small if small[k].shape != big[k].shape)
    assert set(small) == set(big) and len(other_shape) > 3
    with pytest.raises(CheckpointError) as info:
        load_weights(target, path)
    message = str(info.value)
    assert message.startswith(f'{path} does not fit the model ({len(small) - len(other_shape)} of its {len(small)} '
                              f'tensors fit); shape mismatch {len(other_shape)} ({other_shape[0]} ')
    assert f'(+{len(other_shape) - 3} more)' in message and len(message) < 600
    assert message.endswith('this checkpoint was made with another model size: use the config it was trained with')


def test_a_write_that_torch_wraps_still_says_why(tmp_path):
    """torch's writer may turn the OSError of a full disk into its own RuntimeError: the cause is still named."""
    wrapped = RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 64')
    wrapped.__context__ = OSError(28, 'No space left on device')
    assert checkpoint._write_failure(wrapped, tmp_path / 'a.pth') == 'No space left on device'
    assert checkpoint._write_failure(RuntimeError('something else'), tmp_path / 'a.pth') is None
    bare = RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 64')
    assert checkpoint._write_failure(bare, tmp_path / 'a.pth').startswith('the write failed (')  # space left here


def test_choose_checkpoint_prefers_the_flag_then_the_runs_best_then_model_checkpoint(tmp_path):
    best = tmp_path / 'best-run.pth'
    assert checkpoint.choose_checkpoint('x.pth', 'start.pth', best)[0] == 'x.pth'
    assert checkpoint.choose_checkpoint(None, 'start.pth', best) == (
        'start.pth', f'no --checkpoint given and the run has no best checkpoint ({best}) yet: loading '
        'model.checkpoint start.pth')
    with pytest.raises(CheckpointError, match='does not exist'):
        checkpoint.choose_checkpoint(None, None, best)
    best.write_bytes(b'')
    path, why = checkpoint.choose_checkpoint(None, 'start.pth', best)
    assert path == str(best) and why.startswith('model.checkpoint start.pth is where this run started; ')
