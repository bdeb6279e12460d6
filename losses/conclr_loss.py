"""ConCLR total loss: weighted recognition loss over three views plus alpha times the contrastive loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from losses.contrastive import contrastive_loss, onehot_to_index
from losses.recognition import recognition_loss


class ConCLRLoss(nn.Module):
    """sum_v weight_v * CE_v + alpha * L_clr; on a single output (evaluation) just the weighted CE.

    Called by fastai as loss_func(outputs, y, l, y1, l1, v1, y2, l2, v2) in training (the ConAug callback
    builds that target tuple) and loss_func(output, y, l) in evaluation. Every term is recorded in
    `self.losses` for the logging callback, with the share of pairs left out of the contrastive loss
    (`invalid_rate`) and the overlong-pair rate of each view (`overlong_rate_view1`, `overlong_rate_view2`).
    """

    def __init__(self, tau: float = 2.0, alpha: float = 0.2, include_eos: bool = False):
        super().__init__()
        self.tau, self.alpha, self.include_eos = tau, alpha, include_eos
        self.losses: dict[str, torch.Tensor] = {}

    def forward(self, outputs: dict[str, Any] | list[dict[str, Any]], y: torch.Tensor, lengths: torch.Tensor,
                *aug: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, dict):
            loss = outputs['loss_weight'] * recognition_loss(outputs['logits'], y, lengths)
            self.losses = {f"{outputs['name']}_loss": loss.detach()}
            return loss
        if len(aug) != 6 or len(outputs) != 3:
            raise ValueError('ConCLR training needs 3 outputs and targets (y, l, y1, l1, v1, y2, l2, v2); '
                             'is the ConAugPretransform callback active?')
        y1, l1, v1, y2, l2, v2 = aug
        views = ((y, lengths, None), (y1, l1, v1), (y2, l2, v2))
        terms = {}
        for out, (target, length, valid) in zip(outputs, views):
            terms[f"{out['name']}_loss"] = out['loss_weight'] * recognition_loss(out['logits'], target, length, valid)
        rec = sum(terms.values())
        clr = contrastive_loss(outputs[1]['embedding'], outputs[2]['embedding'], onehot_to_index(y1),
                               onehot_to_index(y2), l1, l2, tau=self.tau, include_eos=self.include_eos,
                               valid=v1 & v2)
        # Rates stay 0-dim tensors on the batch's device, like the loss terms: no host sync here.
        self.losses = {**{k: v.detach() for k, v in terms.items()}, 'rec_loss': rec.detach(),
                       'clr_loss': clr.detach(), 'invalid_rate': 1.0 - (v1 & v2).float().mean().detach(),
                       'overlong_rate_view1': 1.0 - v1.float().mean().detach(),
                       'overlong_rate_view2': 1.0 - v2.float().mean().detach()}
        return rec + self.alpha * clr
