"""Vectorised ConAug and contrastive loss checked against their plain loop references on benchmark-sized inputs."""

from __future__ import annotations

import runtime.fastai_compat  # noqa: F401  (must come before fastai)

import torch
import torch.nn.functional as F

from callbacks.conaug import conaug, draw_conaug_params
from losses.contrastive import contrastive_loss
from tools.benchmark.loop_references import conaug_loop, contrastive_loss_loop


def conaug_check(images: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, seed: int = 0) -> bool:
    """Whether `conaug` and `conaug_loop` agree on both views of a `sample`-side draw (both placements)."""
    gen = torch.Generator().manual_seed(seed)
    perm1, left1, perm2, left2 = draw_conaug_params(images.shape[0], 'sample', generator=gen, device=images.device)
    for perm, left in ((perm1, left1), (perm2, left2)):
        vec = conaug(images, labels, lengths, perm, left)
        ref = conaug_loop(images, labels, lengths, perm, left)
        if not torch.allclose(vec[0], ref[0], rtol=1e-5, atol=1e-6):
            return False
        if not all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(vec[1:], ref[1:])):
            return False
    return True


def contrastive_inputs(n: int, t_slots: int, e: int, num_classes: int, device: torch.device, seed: int = 0,
                       max_len: int = 12) -> tuple[torch.Tensor, ...]:
    """z1, z2 (unit, requiring grad), labels1, labels2, lengths1, lengths2, valid from a ConAug of random words."""
    gen = torch.Generator().manual_seed(seed)
    chars = torch.randint(3, max_len + 1, (n,), generator=gen).clamp(max=t_slots - 1)
    labels = torch.zeros(n, t_slots, dtype=torch.long)
    for i, c in enumerate(chars.tolist()):
        labels[i, :c] = torch.randint(1, num_classes, (c,), generator=gen)
    onehot = F.one_hot(labels, num_classes).float()
    lengths = chars + 1
    dummy = torch.zeros(n, 1, 1, 2)
    perm1, left1, perm2, left2 = draw_conaug_params(n, 'fixed', generator=gen)
    _, y1, l1, v1 = conaug(dummy, onehot, lengths, perm1, left1)
    _, y2, l2, v2 = conaug(dummy, onehot, lengths, perm2, left2)
    z1 = F.normalize(torch.randn(n, t_slots, e, generator=gen), dim=-1).to(device).requires_grad_(True)
    z2 = F.normalize(torch.randn(n, t_slots, e, generator=gen), dim=-1).to(device).requires_grad_(True)
    return (z1, z2, y1.argmax(-1).to(device), y2.argmax(-1).to(device), l1.to(device), l2.to(device),
            (v1 & v2).to(device))


def contrastive_check(device: torch.device, n: int = 8, t_slots: int = 26, e: int = 16, tau: float = 2.0,
                      seed: int = 1) -> tuple[bool, float]:
    """(equal to 1e-4 relative in value and gradient, largest relative error) of vectorised vs loop loss."""
    worst = 0.0
    for include_eos in (False, True):
        inputs = contrastive_inputs(n, t_slots, e, 37, device, seed)
        z1, z2 = inputs[0], inputs[1]
        vec = contrastive_loss(*inputs[:6], tau=tau, include_eos=include_eos, valid=inputs[6])
        g_vec = torch.autograd.grad(vec, (z1, z2))
        ref = contrastive_loss_loop(*inputs[:6], tau=tau, include_eos=include_eos, valid=inputs[6])
        g_ref = torch.autograd.grad(ref, (z1, z2))
        worst = max(worst, abs(vec.item() - ref.item()) / max(abs(ref.item()), 1e-12))
        for a, b in zip(g_vec, g_ref):
            worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item())
    return worst <= 1e-4, worst
