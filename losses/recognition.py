"""Recognition loss: soft cross-entropy over the valid slots of a batch, summed over weighted model outputs."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def slot_mask(lengths: torch.Tensor, num_slots: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """N x T bool mask of the slots that count: t < lengths[i] (clamped to T) and valid[i]."""
    lengths = lengths.reshape(-1).long().clamp(max=num_slots)
    mask = torch.arange(num_slots, device=lengths.device)[None, :] < lengths[:, None]
    if valid is not None:
        mask = mask & valid.reshape(-1, 1).to(device=mask.device, dtype=torch.bool)
    return mask


def recognition_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy of N x T x C logits against N x T x C targets, averaged over the counted slots.

    A slot counts when its index is below the sample's length (characters plus the end slot) and the sample is
    valid. The result is float32 whatever the logits' dtype; with no counted slot it is 0 (still differentiable).
    """
    if logits.shape != targets.shape:
        raise ValueError(f'logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape')
    log_probs = F.log_softmax(logits.float(), dim=-1)
    per_slot = -(targets.float() * log_probs).sum(dim=-1)  # N x T
    mask = slot_mask(lengths.to(logits.device), logits.shape[1], valid)
    # torch.where, not multiplication: a non-finite value in an ignored slot must not leak into the sum.
    total = torch.where(mask, per_slot, per_slot.new_zeros(())).sum()
    return total / mask.sum().clamp(min=1)


def _merge_iterations(outputs: Sequence[dict]) -> tuple[torch.Tensor, dict]:
    """Stack the logits of an inner list (iterations of one output) into K x N x T x C; the first dict names it."""
    if not outputs:
        raise ValueError('empty list of outputs inside an output list')
    flat = []
    for output in outputs:
        if isinstance(output, (list, tuple)):
            flat.extend(output)
        else:
            flat.append(output)
    return torch.stack([o['logits'] for o in flat]), flat[0]


class RecognitionLoss(nn.Module):
    """Sum over model outputs of loss_weight * recognition_loss; records each weighted term in `self.losses`.

    `outputs` is a dict (`logits`, `loss_weight`, `name`) or a list of them. An item of that list that is itself a
    list (the iterations of one output, as in ABINet's alignment loop) counts once: its loss is the mean over the
    iterations, weighted and named by its first dict (what ABINet gets by concatenating them along the batch).
    Outputs with loss_weight <= 0 are skipped. `self.losses[f'{name}_loss']` holds the detached weighted term
    of the last call (terms of outputs sharing a name are added).
    """

    def __init__(self) -> None:
        super().__init__()
        self.losses: dict[str, torch.Tensor] = {}

    def forward(self, outputs: dict | Sequence[Any], gt_labels: torch.Tensor, gt_lengths: torch.Tensor, *args: Any,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted loss of every output against one-hot `gt_labels` (N x T x C) and `gt_lengths` (N)."""
        self.losses = {}
        items = [outputs] if isinstance(outputs, dict) else list(outputs)
        total = None
        for item in items:
            if isinstance(item, (list, tuple)):
                stacked, head = _merge_iterations(item)
                weight = float(head.get('loss_weight', 1.0))
                if weight <= 0:
                    continue
                k = stacked.shape[0]
                flat_logits = stacked.reshape(k * stacked.shape[1], *stacked.shape[2:])
                rep = gt_labels.repeat(k, 1, 1)
                loss = recognition_loss(flat_logits, rep, gt_lengths.repeat(k),
                                        None if valid is None else valid.repeat(k))
            else:
                head = item
                weight = float(head.get('loss_weight', 1.0))
                if weight <= 0:
                    continue
                loss = recognition_loss(head['logits'], gt_labels, gt_lengths, valid)
            term = weight * loss
            name = head.get('name')
            if name is not None:
                key = f'{name}_loss'
                self.losses[key] = self.losses.get(key, 0.0) + term.detach()
            total = term if total is None else total + term
        if total is None:
            return gt_labels.new_zeros((), dtype=torch.float32)
        return total
