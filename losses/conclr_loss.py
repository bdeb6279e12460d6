"""ConCLR total loss: weighted recognition loss over three views plus alpha times the contrastive loss."""

from __future__ import annotations

import torch
from torch import nn

from losses.contrastive import contrastive_loss, onehot_to_index
from losses.recognition import recognition_loss

VIEW_NAMES = ('vision', 'vision_aug1', 'vision_aug2')


def view_weights(loss_weight: float | list[float]) -> list[float]:
    """[orig, aug1, aug2] weights of `model.vision.loss_weight`: three values as given, or one number w as
    [w, w/2, w/2] (each ConAug view at half the original's weight, as in the reproduction)."""
    if isinstance(loss_weight, list):
        if len(loss_weight) != 3:
            raise ValueError(f'model.vision.loss_weight for ConCLR needs 3 values [orig, aug1, aug2], '
                             f'got {loss_weight}')
        return [float(w) for w in loss_weight]
    return [float(loss_weight), 0.5 * loss_weight, 0.5 * loss_weight]


class ConCLRLoss(nn.Module):
    """sum_v weight_v * CE_v + alpha * L_clr; on a single output (evaluation) just the original view's weighted CE.

    `weights` are the [orig, aug1, aug2] view weights (`view_weights` of the config's `model.vision.loss_weight`).

    Called by fastai as loss_func(outputs, y, l, y1, l1, v1, y2, l2, v2) in training (the ConAug callback
    builds that target tuple) and loss_func(output, y, l) in evaluation. Every term is recorded in
    `self.losses` for the logging callback, with the share of pairs left out of the contrastive loss
    (`invalid_rate`) and the overlong-pair rate of each view (`overlong_rate_view1`, `overlong_rate_view2`).
    """

    def __init__(self, tau: float = 2.0, alpha: float = 0.2, include_eos: bool = False,
                 weights: tuple[float, float, float] | list[float] = (1.0, 0.5, 0.5)):
        super().__init__()
        self.tau, self.alpha, self.include_eos = tau, alpha, include_eos
        self.weights = [float(w) for w in weights]
        self.losses: dict[str, torch.Tensor] = {}

    def forward(self, outputs: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]], y: torch.Tensor,
                lengths: torch.Tensor, *aug: torch.Tensor) -> torch.Tensor:
        """The total loss of the three views' outputs (training) or of one output (evaluation)."""
        if isinstance(outputs, dict):
            loss = self.weights[0] * recognition_loss(outputs['logits'], y, lengths)
            self.losses = {f'{VIEW_NAMES[0]}_loss': loss.detach()}
            return loss
        if len(aug) != 6 or len(outputs) != 3:
            raise ValueError('ConCLR training needs 3 outputs and targets (y, l, y1, l1, v1, y2, l2, v2); '
                             'is the ConAugPretransform callback active?')
        y1, l1, v1, y2, l2, v2 = aug
        views = ((y, lengths, None), (y1, l1, v1), (y2, l2, v2))
        terms = {}
        for name, weight, out, (target, length, valid) in zip(VIEW_NAMES, self.weights, outputs, views):
            terms[f'{name}_loss'] = weight * recognition_loss(out['logits'], target, length, valid)
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
