"""BaseVision: the official state_dict layout, and the forward pass against a plain functional reference."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from configuration import Config
from modules.model_vision import BaseVision
from tests.helpers import randomise

REPO = Path(__file__).resolve().parents[2]
SPEC_TSV = REPO / '..' / 'shared' / 'spec' / 'base_vision_state_dict.tsv'
CHARSET = REPO / 'data' / 'charset_36.txt'
TINY = {'dataset': {'max_length': 5, 'charset_path': str(CHARSET)},
        'model': {'vision': {'resnet_widths': [4, 8, 8, 16, 16], 'resnet_layers': [2, 1, 2, 1, 1], 'd_model': 16,
                             'nhead': 2, 'd_inner': 32, 'backbone_ln': 2, 'attention_channels': 8}}}
STRIDES = (2, 1, 2, 1, 1)


def tiny_config(tmp_path: Path, **vision) -> Config:
    """The tiny config above merged by Config, with `model.vision` overrides."""
    tree = {'dataset': dict(TINY['dataset']), 'model': {'vision': {**TINY['model']['vision'], **vision}}}
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(tree))
    return Config(path)


def sinusoid(length: int, d: int) -> torch.Tensor:
    """Analytic table in float64: pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(same)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    even = torch.arange(0, d, 2, dtype=torch.float64)[None, :]
    angle = pos / 10000.0 ** (even / d)
    table = torch.zeros(length, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)[:, :d // 2]
    return table


# ---------------------------------------------------------------- functional reference (spec section 1 only)

def bn(x, sd, p):
    return F.batch_norm(x, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'],
                        training=False, eps=1e-5)


def ref_resnet(x, sd, layers):
    p = 'backbone.resnet.'
    x = F.relu(bn(F.conv2d(x, sd[p + 'conv1.weight'], stride=1, padding=1), sd, p + 'bn1'))
    for stage, (blocks, stride) in enumerate(zip(layers, STRIDES), 1):
        for b in range(blocks):
            q = f'{p}layer{stage}.{b}.'
            s = stride if b == 0 else 1
            out = F.relu(bn(F.conv2d(x, sd[q + 'conv1.weight']), sd, q + 'bn1'))
            out = bn(F.conv2d(out, sd[q + 'conv2.weight'], stride=s, padding=1), sd, q + 'bn2')
            if b == 0:  # every stage's first block has the projection shortcut
                short = bn(F.conv2d(x, sd[q + 'downsample.0.weight'], stride=s), sd, q + 'downsample.1')
            else:
                short = x
            x = F.relu(out + short)
    return x


def ref_encoder_layer(x, sd, p, nhead):
    """Post-norm layer on batch-first x (N, S, E): x = LN(x + SA(x)); x = LN(x + FF(x))."""
    n, s, e = x.shape
    d = e // nhead
    qkv = F.linear(x, sd[p + 'self_attn.in_proj_weight'], sd[p + 'self_attn.in_proj_bias'])
    q, k, v = (t.reshape(n, s, nhead, d).transpose(1, 2) for t in qkv.split(e, dim=-1))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    heads = (attn @ v).transpose(1, 2).reshape(n, s, e)
    sa = F.linear(heads, sd[p + 'self_attn.out_proj.weight'], sd[p + 'self_attn.out_proj.bias'])
    x = F.layer_norm(x + sa, (e,), sd[p + 'norm1.weight'], sd[p + 'norm1.bias'], eps=1e-5)
    ff = F.linear(F.relu(F.linear(x, sd[p + 'linear1.weight'], sd[p + 'linear1.bias'])),
                  sd[p + 'linear2.weight'], sd[p + 'linear2.bias'])
    return F.layer_norm(x + ff, (e,), sd[p + 'norm2.weight'], sd[p + 'norm2.bias'], eps=1e-5)


def ref_position_attention(feat, sd, max_slots):
    p = 'attention.'
    n, e, h, w = feat.shape
    enc, k = [], feat
    for i, stride in enumerate([(1, 2), (2, 2), (2, 2), (2, 2)]):
        q = f'{p}k_encoder.{i}.'
        k = F.relu(bn(F.conv2d(k, sd[q + '0.weight'], sd[q + '0.bias'], stride=stride, padding=1), sd, q + '1'))
        enc.append(k)
    for i in range(4):
        q = f'{p}k_decoder.{i}.'
        k = F.interpolate(k, size=(h, w), mode='nearest') if i == 3 else F.interpolate(k, scale_factor=2,
                                                                                        mode='nearest')
        k = F.relu(bn(F.conv2d(k, sd[q + '1.weight'], sd[q + '1.bias'], padding=1), sd, q + '2'))
        if i < 3:
            k = k + enc[2 - i]
    query = F.linear(sinusoid(max_slots, e).to(feat.dtype), sd[p + 'project.weight'], sd[p + 'project.bias'])
    scores = torch.einsum('te,nes->nts', query, k.flatten(2)) / math.sqrt(e)
    scores = torch.softmax(scores, dim=-1)
    vecs = scores @ feat.flatten(2).transpose(1, 2)
    return vecs, scores.reshape(n, max_slots, h, w)


def ref_pt_lengths(logits):
    out = []
    for row in logits.argmax(-1).tolist():
        out.append(row.index(0) + 1 if 0 in row else len(row))
    return torch.tensor(out)


def reference_forward(images, sd, config):
    """ABINet-Vision (transformer backbone, position attention) from the state_dict, eval mode."""
    feat = ref_resnet(images, sd, config.model_vision_resnet_layers)
    n, e, h, w = feat.shape
    x = feat.flatten(2).transpose(1, 2) + sinusoid(h * w, e).to(feat.dtype)  # row-major positions
    for layer in range(config.model_vision_backbone_ln):
        x = ref_encoder_layer(x, sd, f'backbone.transformer.layers.{layer}.', config.model_vision_nhead)
    feat = x.transpose(1, 2).reshape(n, e, h, w)
    vecs, scores = ref_position_attention(feat, sd, config.dataset_max_length + 1)
    logits = F.linear(vecs, sd['cls.weight'], sd['cls.bias'])
    return {'feature': vecs, 'logits': logits, 'attn_scores': scores, 'pt_lengths': ref_pt_lengths(logits)}


# ---------------------------------------------------------------- tests

def parse_tsv(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        key, shape, dtype = line.split('\t')
        dims = () if shape == 'scalar' else tuple(int(s) for s in shape.split('x'))
        rows.append((key, dims, dtype))
    return rows


@pytest.fixture(scope='module')
def default_model():
    config = Config()
    config.dataset_charset_path = str(CHARSET)
    return BaseVision(config)


@pytest.mark.skipif(not SPEC_TSV.is_file(), reason='spec TSV not available')
def test_state_dict_matches_official_layout(default_model):
    expected = parse_tsv(SPEC_TSV)
    sd = default_model.state_dict()
    assert len(expected) == 398
    assert list(sd) == [k for k, _, _ in expected]  # same keys in the same order
    for key, shape, dtype in expected:
        assert tuple(sd[key].shape) == shape, key
        assert str(sd[key].dtype) == f'torch.{dtype}', key


def test_default_parameter_count_and_persistent_tables(default_model):
    trainable = sum(p.numel() for p in default_model.parameters() if p.requires_grad)
    assert trainable == 23_547_461
    sd = default_model.state_dict()
    buffers = dict(default_model.named_buffers())
    for key, length in (('backbone.pos_encoder.pe', 256), ('attention.pos_encoder.pe', 26)):
        assert key in sd and key in buffers  # persistent buffer, not a parameter
        pe = sd[key]
        assert pe.shape == (length, 1, 512)
        assert pe[0, 0, 0] == 0 and pe[0, 0, 1] == 1  # sin(0), cos(0)
        for p, i in ((1, 0), (1, 1), (7, 10), (7, 11), (length - 1, 200), (length - 1, 511), (3, 510)):
            k = i - i % 2
            angle = p / 10000 ** (k / 512)
            want = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert pe[p, 0, i].item() == pytest.approx(want, abs=1e-5), (key, p, i)
        # float32 rounding of the angles (as upstream computes them) reaches ~1.5e-5 at position 255
        torch.testing.assert_close(pe[:, 0].double(), sinusoid(length, 512), atol=5e-5, rtol=0)


def test_forward_equals_functional_reference(tmp_path):
    config = tiny_config(tmp_path)
    torch.manual_seed(0)
    model = BaseVision(config)
    randomise(model)
    model.eval()
    images = torch.randn(4, 3, 32, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Peaky attention (else every glimpse is close to the mean feature), and a null-class bias that puts the
        # null logit among the others, so that both predicted-length cases occur.
        model.attention.project.weight.mul_(20)
        logits = model(images)['logits']
        model.cls.bias[0] += (logits[..., 1:].max(-1).values - logits[..., 0]).median()
        out = model(images)
        ref = reference_forward(images, model.state_dict(), config)
    assert out['feature'].shape == (4, 6, 16) and out['logits'].shape == (4, 6, 37)
    assert out['attn_scores'].shape == (4, 6, 8, 32)
    assert out['attn_scores'].max() > 10 / 256  # far from uniform
    for key in ('feature', 'logits', 'attn_scores'):
        torch.testing.assert_close(out[key], ref[key], atol=1e-5, rtol=1e-5, msg=key)
    assert out['pt_lengths'].dtype == torch.long
    assert out['pt_lengths'].tolist() == ref['pt_lengths'].tolist()
    assert 6 in ref['pt_lengths'] and len(set(ref['pt_lengths'].tolist())) > 1
    torch.testing.assert_close(out['attn_scores'].sum((2, 3)), torch.ones(4, 6))
    assert all(isinstance(v, torch.Tensor) for v in out.values())  # tensors only: the loss holds the weights


@pytest.mark.parametrize('null_bias, expected', [(100.0, 1), (-100.0, 6)])
def test_pt_lengths_all_null_and_no_null(tmp_path, null_bias, expected):
    model = BaseVision(tiny_config(tmp_path)).eval()
    with torch.no_grad():
        model.cls.bias[0] = null_bias
        out = model(torch.randn(2, 3, 32, 128))
    assert out['pt_lengths'].tolist() == [expected, expected]  # 6 = every slot, when none is null


def test_dropout_active_only_in_train_mode(tmp_path):
    model = BaseVision(tiny_config(tmp_path, dropout=0.5))
    images = torch.randn(2, 3, 32, 128)
    model.eval()
    with torch.no_grad():
        a, b = model(images)['logits'], model(images)['logits']
    torch.testing.assert_close(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(images)['logits'], model(images)['logits']
    assert not torch.allclose(c, d)


@pytest.mark.parametrize('backbone, attention', [('resnet', 'position'), ('transformer', 'attention'),
                                                 ('resnet', 'attention')])
def test_other_variants_shapes(tmp_path, backbone, attention):
    model = BaseVision(tiny_config(tmp_path, backbone=backbone, attention=attention)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 128))
    assert out['feature'].shape == (2, 6, 16)
    assert out['logits'].shape == (2, 6, 37)
    assert out['attn_scores'].shape == (2, 6, 8, 32)
    assert out['pt_lengths'].shape == (2,)
    torch.testing.assert_close(out['attn_scores'].sum((2, 3)), torch.ones(2, 6))
    keys = model.state_dict().keys()
    assert any(k.startswith('backbone.transformer.') for k in keys) == (backbone == 'transformer')
    assert ('attention.project.weight' in keys) == (attention == 'position')


@pytest.mark.parametrize('vision, match', [({'backbone': 'lstm'}, 'backbone'), ({'attention': 'foo'}, 'attention'),
                                           ({'d_model': 32}, 'd_model')])
def test_bad_config_raises(tmp_path, vision, match):
    with pytest.raises(ValueError, match=match):
        BaseVision(tiny_config(tmp_path, **vision))


@pytest.mark.parametrize('backbone', ['transformer', 'resnet'])
def test_channels_last_weights_get_channels_last_inputs_and_the_same_outputs(tmp_path, backbone):
    """With channels-last weights the stem and the attention's key encoder see channels-last inputs (no layout
    flip inside a convolution) and the outputs equal the NCHW model's; NCHW weights keep NCHW inputs."""
    config = tiny_config(tmp_path, backbone=backbone, d_model=16)
    torch.manual_seed(0)
    nchw = randomise(BaseVision(config))
    torch.manual_seed(0)
    channels_last = randomise(BaseVision(config)).to(memory_format=torch.channels_last)
    images = torch.randn(3, 3, 32, 128, generator=torch.Generator().manual_seed(1))  # an NCHW batch
    seen = {}

    def recorder(name):
        def hook(module, inputs):
            seen.setdefault(name, []).append(inputs[0].is_contiguous(memory_format=torch.channels_last)
                                             and not inputs[0].is_contiguous())
        return hook
    for model, tag in ((nchw, 'nchw'), (channels_last, 'cl')):
        stem = getattr(model.backbone, 'resnet', model.backbone).conv1
        stem.register_forward_pre_hook(recorder(f'{tag} stem'))
        model.attention.k_encoder[0][0].register_forward_pre_hook(recorder(f'{tag} key encoder'))
    with torch.no_grad():
        want, got = nchw(images), channels_last(images)
    assert seen == {'nchw stem': [False], 'nchw key encoder': [False], 'cl stem': [True], 'cl key encoder': [True]}
    for key in ('logits', 'attn_scores', 'feature'):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('fast', [True, False])
def test_fast_dropout_key_chooses_the_encoder_dropout(tmp_path, fast):
    model = BaseVision(tiny_config(tmp_path, fast_dropout=fast))
    kinds = {type(m).__name__ for m in model.backbone.modules() if isinstance(m, torch.nn.Dropout)}
    assert kinds == ({'FastDropout'} if fast else {'Dropout'})
