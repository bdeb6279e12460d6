"""ConCLR's supervised contrastive loss over the character embeddings of two ConAug views (conclr.md section 3)."""

from __future__ import annotations

import torch
from torch import nn


def onehot_to_index(labels: torch.Tensor) -> torch.Tensor:
    """Class indices (N x T) of one-hot or label-smoothed targets (N x T x C)."""
    return labels.argmax(dim=-1)


def _char_mask(lengths: torch.Tensor, t_slots: int, include_eos: bool) -> torch.Tensor:
    """N x T bool: slots holding a character (t < length - 1), plus the end slot with include_eos."""
    limit = lengths.long() if include_eos else lengths.long() - 1
    return torch.arange(t_slots, device=lengths.device).unsqueeze(0) < limit.unsqueeze(1)


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, labels1: torch.Tensor, labels2: torch.Tensor,
                     lengths1: torch.Tensor, lengths2: torch.Tensor, tau: float = 2.0, include_eos: bool = False,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid pairs of the per-sample sum over anchors of the supervised contrastive term (float32 scalar).

    z1, z2: N x T x E unit embeddings of the two views; labels1, labels2: N x T class indices;
    lengths1, lengths2: N, characters + 1; valid: N bool (None = all valid).
    """
    if z1.shape != z2.shape or z1.dim() != 3:
        raise ValueError(f'z1 and z2 must both be N x T x E, got {tuple(z1.shape)} and {tuple(z2.shape)}')
    if labels1.shape != z1.shape[:2] or labels2.shape != z2.shape[:2]:
        raise ValueError(f'labels must be N x T class indices matching z {tuple(z1.shape[:2])}, got '
                         f'{tuple(labels1.shape)} and {tuple(labels2.shape)} (use onehot_to_index)')
    n, t_slots, _ = z1.shape
    device = z1.device
    with torch.autocast(device_type=device.type, enabled=False):
        z = torch.cat([z1, z2], dim=1).float()  # N x 2T x E
        labels = torch.cat([labels1, labels2], dim=1).to(device)  # N x 2T
        members = torch.cat([_char_mask(lengths1.to(device), t_slots, include_eos),
                             _char_mask(lengths2.to(device), t_slots, include_eos)], dim=1)  # N x 2T

        sim = torch.bmm(z, z.transpose(1, 2)) / tau  # N x 2T x 2T, s(m, a)
        not_self = ~torch.eye(2 * t_slots, dtype=torch.bool, device=device).unsqueeze(0)
        contrast = members.unsqueeze(2) & members.unsqueeze(1) & not_self  # a in A(m)
        positive = contrast & (labels.unsqueeze(2) == labels.unsqueeze(1))  # p in P(m)

        # Rows with an empty A(m) would give logsumexp(-inf, ...) = -inf and NaN gradients; they are never
        # anchors (P(m) is empty too), so give them finite placeholder logits before the reduction.
        has_contrast = contrast.any(dim=2, keepdim=True)
        logits = torch.where(contrast, sim, torch.full_like(sim, float('-inf')))
        logits = torch.where(has_contrast, logits, torch.zeros_like(sim))
        log_norm = torch.logsumexp(logits, dim=2, keepdim=True)  # N x 2T x 1, finite everywhere
        log_prob = sim - log_norm

        num_pos = positive.sum(dim=2)  # |P(m)|
        pos_sum = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=2)
        anchor_loss = -pos_sum / num_pos.clamp(min=1)
        anchor_loss = torch.where(num_pos > 0, anchor_loss, torch.zeros_like(anchor_loss))
        pair_loss = anchor_loss.sum(dim=1)  # L_pair, N

        if valid is None:
            valid = torch.ones(n, dtype=torch.bool, device=device)
        valid = valid.to(device=device, dtype=torch.bool)
        # No data-dependent branch (no device sync): with no valid pair this is 0 with a zero gradient path.
        total = torch.where(valid, pair_loss, torch.zeros_like(pair_loss)).sum()
        return total / valid.sum().clamp(min=1).float()


class ContrastiveLoss(nn.Module):
    """Module wrapper of `contrastive_loss` with its temperature and end-slot choice."""

    def __init__(self, tau: float = 2.0, include_eos: bool = False):
        super().__init__()
        self.tau = tau
        self.include_eos = include_eos

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels1: torch.Tensor, labels2: torch.Tensor,
                lengths1: torch.Tensor, lengths2: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The contrastive loss of two views (see `contrastive_loss`)."""
        return contrastive_loss(z1, z2, labels1, labels2, lengths1, lengths2, tau=self.tau,
                                include_eos=self.include_eos, valid=valid)

    def extra_repr(self) -> str:
        return f'tau={self.tau}, include_eos={self.include_eos}'
