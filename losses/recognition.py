"""Recognition loss: soft cross-entropy over the valid slots of a batch, times the weight the config gives."""

from __future__ import annotations

from typing import Any

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


def first_weight(loss_weight: float | list[float]) -> float:
    """The original view's weight of `model.vision.loss_weight` (a number, or its first value when a list)."""
    return float(loss_weight[0] if isinstance(loss_weight, list) else loss_weight)


class RecognitionLoss(nn.Module):
    """`weight` * recognition_loss of the model output's `logits`; records the detached term in `self.losses`.

    The weight comes from the config (`model.vision.loss_weight`, see training/builders.py), not from the
    model; `self.losses[f'{name}_loss']` holds the term of the last call for the logging callback.
    """

    def __init__(self, weight: float = 1.0, name: str = 'vision') -> None:
        super().__init__()
        self.weight, self.name = float(weight), name
        self.losses: dict[str, torch.Tensor] = {}
        self.accumulation_weight: torch.Tensor | None = None

    def forward(self, output: dict[str, torch.Tensor], gt_labels: torch.Tensor, gt_lengths: torch.Tensor,
                *args: Any, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted loss of `output['logits']` against one-hot `gt_labels` (N x T x C) and `gt_lengths` (N);
        further target items (ConCLR's view targets) are ignored."""
        if not isinstance(output, dict):
            raise TypeError(f'RecognitionLoss takes one output dict, got {type(output).__name__} (a ConCLR model '
                            'trains with ConCLRLoss)')
        term = self.weight * recognition_loss(output['logits'], gt_labels, gt_lengths, valid)
        # the batch's counted slots: gradient accumulation weighs micro-batches by them (callbacks/accumulate.py)
        self.accumulation_weight = slot_mask(gt_lengths.to(term.device), output['logits'].shape[1], valid).sum()
        self.losses = {f'{self.name}_loss': term.detach()}
        return term
