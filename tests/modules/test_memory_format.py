"""Memory-format decisions and the re-layout of optimiser state after a resume (checked on the CPU)."""

import pytest
import torch
from torch import nn

from modules.memory_format import (
    align_optimizer_state,
    dense_like,
    enable_cudnn_autotune,
    memory_format_of,
    weights_memory_format,
)

CL, NCHW = torch.channels_last, torch.contiguous_format


@pytest.mark.parametrize('device, asked, expected', [('cuda', True, CL), ('cuda:1', True, CL), ('cuda', False, NCHW),
                                                     ('cpu', True, NCHW), ('cpu', False, NCHW)])
def test_weights_are_channels_last_only_on_cuda_when_asked(device, asked, expected):
    assert weights_memory_format(device, asked) == expected


def test_cudnn_autotune_only_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    assert not enable_cudnn_autotune('cpu') and torch.backends.cudnn.benchmark is False
    assert enable_cudnn_autotune(torch.device('cuda', 1)) and torch.backends.cudnn.benchmark is True


def test_memory_format_of_and_dense_like():
    nchw = torch.randn(2, 3, 4, 5)
    cl = nchw.contiguous(memory_format=torch.channels_last)
    assert memory_format_of(nchw) == torch.contiguous_format and memory_format_of(cl) == torch.channels_last
    assert memory_format_of(torch.randn(2, 3, 4)) == torch.contiguous_format
    assert memory_format_of(nchw[..., ::2]) == torch.contiguous_format  # strided NCHW: made NCHW-dense
    moved = dense_like(nchw, cl)
    assert moved.stride() == cl.stride() and torch.equal(moved, nchw)
    assert dense_like(nchw, nchw) is nchw
    strided = dense_like(nchw[..., ::2], nchw)
    assert strided.is_contiguous() and torch.equal(strided, nchw[..., ::2])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def test_resumed_adam_state_is_laid_out_like_channels_last_weights():
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    source = _model()
    opt = torch.optim.Adam(source.parameters(), lr=0.1)
    source(x).sum().backward()
    opt.step()
    saved = opt.state_dict()  # NCHW moments, as a checkpoint holds them

    resumed = _model()
    resumed(x)  # materialise the lazy layer
    resumed = resumed.to(memory_format=torch.channels_last)
    conv = resumed[0].weight
    assert not conv.is_contiguous()  # the weights really are channels-last
    opt2 = torch.optim.Adam(resumed.parameters(), lr=0.1)
    opt2.load_state_dict(saved)
    assert opt2.state[conv]['exp_avg'].stride() != conv.stride()  # what torch's load leaves
    assert align_optimizer_state(opt2) == 2  # exp_avg and exp_avg_sq of the conv weight; the rest already match
    for p_old, p_new in zip(source.parameters(), resumed.parameters()):
        for key in ('exp_avg', 'exp_avg_sq'):
            state = opt2.state[p_new][key]
            assert state.stride() == p_new.stride() and torch.equal(state, opt.state[p_old][key])
    assert align_optimizer_state(opt2) == 0
