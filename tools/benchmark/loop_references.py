"""Plain loop references of the vectorised math, written from the spec one sample at a time: the tests compare
the package against them and the benchmark times them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conaug_loop(images: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, perm: torch.Tensor,
                partner_left: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain per-sample reference of `conaug`: one pair at a time, same outputs (images, labels, lengths, valid)."""
    n, _, h, w = images.shape
    t_slots = labels.shape[1]
    perm_list, left_list, length_list = perm.tolist(), partner_left.tolist(), lengths.tolist()
    out_images, out_labels, out_lengths, out_valid = [], [], [], []
    for i in range(n):
        left, right = (perm_list[i], i) if left_list[i] else (i, perm_list[i])
        pair = torch.cat([images[left], images[right]], dim=2).unsqueeze(0)  # 1 x 3 x H x 2W
        out_images.append(F.interpolate(pair, size=(h, w), mode='bilinear', align_corners=False)[0])
        chars_left, chars_right = int(length_list[left]) - 1, int(length_list[right]) - 1
        target = torch.empty_like(labels[i])
        target[:chars_left] = labels[left, :chars_left]
        target[chars_left:] = labels[right, :t_slots - chars_left]
        out_labels.append(target)
        out_lengths.append(min(chars_left + chars_right + 1, t_slots))
        out_valid.append(chars_left + chars_right <= t_slots - 1)
    return (torch.stack(out_images), torch.stack(out_labels),
            torch.tensor(out_lengths, dtype=lengths.dtype, device=lengths.device),
            torch.tensor(out_valid, dtype=torch.bool, device=images.device))


def contrastive_loss_loop(z1: torch.Tensor, z2: torch.Tensor, labels1: torch.Tensor, labels2: torch.Tensor,
                          lengths1: torch.Tensor, lengths2: torch.Tensor, tau: float = 2.0, include_eos: bool = False,
                          valid: torch.Tensor | None = None) -> torch.Tensor:
    """Plain per-anchor reference of `contrastive_loss` (conclr.md section 3), written straight from the formula."""
    n, t_slots, _ = z1.shape
    valid_list = [True] * n if valid is None else valid.tolist()
    extra = 0 if include_eos else 1
    pair_losses = []
    for i in range(n):
        if not valid_list[i]:
            continue
        k1 = min(int(lengths1[i]) - extra, t_slots)
        k2 = min(int(lengths2[i]) - extra, t_slots)
        z = torch.cat([z1[i, :k1], z2[i, :k2]])  # the positions M(i), in the inputs' dtype
        labels = labels1[i, :k1].tolist() + labels2[i, :k2].tolist()
        pair = z.new_zeros(())
        for m in range(len(labels)):
            others = [a for a in range(len(labels)) if a != m]  # A(m)
            positives = [j for j, a in enumerate(others) if labels[a] == labels[m]]  # P(m), as indices into A(m)
            if not positives:
                continue
            sims = z[others] @ z[m] / tau  # s(m, a) for a in A(m)
            log_norm = torch.logsumexp(sims, dim=0)
            pair = pair + (log_norm - sims[positives]).mean()
        pair_losses.append(pair)
    if not pair_losses:
        return (z1.sum() + z2.sum()) * 0.0
    return torch.stack(pair_losses).mean()
