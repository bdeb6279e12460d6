"""ConCLR_Vision: BaseVision on one batch; one shared pass over three batches with a projection head."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from configuration import Config
from modules.model_conclr import ConCLR_Vision
from modules.model_vision import BaseVision

REPO = Path(__file__).resolve().parents[2]
VISION = {'resnet_widths': [4, 8, 8, 16, 16], 'resnet_layers': [1, 1, 1, 1, 1], 'd_model': 16, 'nhead': 2,
          'd_inner': 32, 'backbone_ln': 1, 'attention_channels': 8}
N, T, E, C = 2, 6, 8, 37


def tiny_config(tmp_path: Path, projection: dict | None = None, **vision) -> Config:
    """A tiny ConCLR config merged by Config (max_length 5, d_model 16, embedding 8)."""
    tree = {'dataset': {'max_length': 5, 'charset_path': str(REPO / 'data' / 'charset_36.txt')},
            'model': {'name': 'modules.model_conclr.ConCLR_Vision', 'vision': {**VISION, **vision},
                      'projection': {'channels': E, **(projection or {})}}}
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(tree))
    return Config(path)


def batches(k: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, 3, 32, 128, generator=g) for _ in range(k)]


def randomise_bn(model: torch.nn.Module) -> None:
    """Random BN running statistics, so eval mode differs from train mode and from the identity."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith('running_mean'):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)


def assert_same_recognition(a: dict, b: dict) -> None:
    for key in ('feature', 'logits', 'attn_scores'):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=key)
    assert torch.equal(a['pt_lengths'], b['pt_lengths'])


def test_single_batch_equals_base_vision(tmp_path):
    config = tiny_config(tmp_path)
    torch.manual_seed(0)
    base = BaseVision(config)
    randomise_bn(base)
    model = ConCLR_Vision(config)
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith('projection_head.') for k in result.missing_keys)
    base.eval()
    model.eval()
    x = batches(1)[0]
    with torch.no_grad():
        ours, theirs = model(x), base(x)
    assert isinstance(ours, dict) and all(isinstance(v, torch.Tensor) for v in ours.values())
    assert 'embedding' not in ours
    assert_same_recognition(ours, theirs)


def test_base_vision_keys_are_a_prefix_subset(tmp_path):
    config = tiny_config(tmp_path)
    base_keys = list(BaseVision(config).state_dict())
    conclr_keys = list(ConCLR_Vision(config).state_dict())
    assert [k for k in conclr_keys if not k.startswith('projection_head.')] == base_keys


def test_three_batches_equal_separate_passes_in_eval(tmp_path):
    torch.manual_seed(0)
    model = ConCLR_Vision(tiny_config(tmp_path))
    randomise_bn(model)
    model.eval()
    x, x1, x2 = batches()
    with torch.no_grad():
        outputs = model(x, x1, x2)
        separate = [model(b) for b in (x, x1, x2)]
    assert isinstance(outputs, list) and len(outputs) == 3
    assert all(isinstance(v, torch.Tensor) for o in outputs for v in o.values())  # weights live in the loss
    assert 'embedding' not in outputs[0]
    for out, ref in zip(outputs, separate):
        assert out['logits'].shape == (N, T, C)
        assert_same_recognition(out, ref)
    head = model.projection_head.proj
    for out in outputs[1:]:
        z = out['embedding']
        assert z.shape == (N, T, E)
        torch.testing.assert_close(z.norm(dim=-1), torch.ones(N, T))
        # plain MLP reference on the glimpse vectors: Linear -> ReLU -> Linear -> L2 normalise
        hidden = torch.relu(out['feature'] @ head[0].weight.t() + head[0].bias)
        proj = hidden @ head[2].weight.t() + head[2].bias
        torch.testing.assert_close(z, proj / proj.norm(dim=-1, keepdim=True))


def test_train_mode_is_one_pass_over_the_concatenation(tmp_path):
    """With dropout off, the 3-view output equals the single-batch forward on cat(x, x1, x2), split in three:
    BatchNorm statistics are computed over all 3N images."""
    torch.manual_seed(0)
    model = ConCLR_Vision(tiny_config(tmp_path, dropout=0.0)).train()
    x, x1, x2 = batches()
    with torch.no_grad():
        outputs = model(x, x1, x2)
        joint = model(torch.cat([x, x1, x2]))
        alone = model(x)
    for k, out in enumerate(outputs):
        assert out['feature'].shape == (N, T, 16) and out['attn_scores'].shape == (N, T, 8, 32)
        torch.testing.assert_close(out['logits'], joint['logits'][k * N:(k + 1) * N], atol=1e-5, rtol=1e-5)
    # and not like a pass over the original batch alone (whose BN statistics differ)
    assert not torch.allclose(outputs[0]['logits'], alone['logits'], atol=1e-4)


def test_gradients_reach_every_parameter(tmp_path):
    torch.manual_seed(0)
    model = ConCLR_Vision(tiny_config(tmp_path)).train()
    outputs = model(*batches())
    loss = sum(o['logits'].square().mean() for o in outputs) + outputs[1]['embedding'].sum()
    loss = loss + (outputs[1]['embedding'] * outputs[2]['embedding']).sum()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize('head, shapes', [
    ('mlp', {'projection_head.proj.0.weight': (16, 16), 'projection_head.proj.0.bias': (16,),
             'projection_head.proj.2.weight': (E, 16), 'projection_head.proj.2.bias': (E,)}),
    ('linear', {'projection_head.proj.weight': (E, 16), 'projection_head.proj.bias': (E,)}),
])
def test_projection_head_keys(tmp_path, head, shapes):
    model = ConCLR_Vision(tiny_config(tmp_path, projection={'head': head})).eval()
    sd = model.state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items() if k.startswith('projection_head.')}
    assert got == shapes
    with torch.no_grad():
        z = model(*batches())[2]['embedding']
    if head == 'linear':
        proj = F.linear(model(*batches())[2]['feature'], sd['projection_head.proj.weight'],
                        sd['projection_head.proj.bias']).detach()
        torch.testing.assert_close(z, proj / proj.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(N, T))


def test_unknown_head_raises(tmp_path):
    with pytest.raises(ValueError, match='head'):
        ConCLR_Vision(tiny_config(tmp_path, projection={'head': 'conv'}))
