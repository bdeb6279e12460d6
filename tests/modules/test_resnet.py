"""ResNet45: output size, stage layout, initialisation statistics."""

import math

import pytest
import torch
from torch import nn

from modules.resnet import ResNet45

TINY_WIDTHS = [4, 8, 8, 16, 16]


@pytest.fixture(scope='module')
def full():
    torch.manual_seed(0)
    return ResNet45()


@pytest.mark.parametrize('h, w', [(32, 128), (64, 256)])
def test_output_is_stride_4(h, w):
    model = ResNet45(TINY_WIDTHS, [1, 2, 1, 1, 1]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, 16, h // 4, w // 4)
    assert (out >= 0).all()  # ends with the ReLU after the shortcut addition


def test_stage_layout(full):
    widths, blocks, strides = [32, 64, 128, 256, 512], [3, 4, 6, 6, 3], [2, 1, 2, 1, 1]
    assert full.conv1.kernel_size == (3, 3) and full.conv1.stride == (1, 1) and full.conv1.bias is None
    assert full.conv1.out_channels == 32
    assert not any(isinstance(m, nn.MaxPool2d) for m in full.modules())
    for i, (width, n, stride) in enumerate(zip(widths, blocks, strides), 1):
        stage = getattr(full, f'layer{i}')
        assert len(stage) == n
        for b, block in enumerate(stage):
            s = stride if b == 0 else 1
            assert block.conv1.kernel_size == (1, 1) and block.conv1.stride == (1, 1)
            assert block.conv2.kernel_size == (3, 3) and block.conv2.stride == (s, s) and block.conv2.padding == (1, 1)
            assert block.conv2.out_channels == width
            assert block.conv1.bias is None and block.conv2.bias is None
        ds = stage[0].downsample
        assert isinstance(ds[0], nn.Conv2d) and isinstance(ds[1], nn.BatchNorm2d)
        assert ds[0].kernel_size == (1, 1) and ds[0].stride == (stride, stride) and ds[0].bias is None
        assert all(block.downsample is None for block in stage[1:])


def test_every_first_block_has_downsample_for_any_widths():
    # layer5 16 -> 16 with stride 1 still gets its projection shortcut (the key layout must not depend on widths)
    model = ResNet45(TINY_WIDTHS, [1, 1, 1, 1, 1])
    keys = model.state_dict().keys()
    for i in range(1, 6):
        assert f'layer{i}.0.downsample.0.weight' in keys
        assert f'layer{i}.0.downsample.1.running_var' in keys


def test_conv_init_statistics(full):
    checked = 0
    for name, m in full.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        w = m.weight.detach().double()
        want = math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
        n = w.numel()
        if n < 800:
            continue
        # sample std of n normals: relative error ~ 1/sqrt(2n); 6 sigma keeps false failures negligible
        assert abs(w.std().item() / want - 1) < 6 / math.sqrt(2 * n), name
        assert abs(w.mean().item()) < 6 * want / math.sqrt(n), name
        checked += 1
    assert checked > 40


def test_bn_init(full):
    bns = [m for m in full.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 2 * 22 + 5  # stem, two per block, one per downsample
    for m in bns:
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_bad_layout_raises():
    with pytest.raises(ValueError):
        ResNet45([4, 8, 16], [1, 1, 1])
