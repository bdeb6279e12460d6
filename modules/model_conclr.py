"""ConCLR_Vision: ABINet-Vision plus a projection head, trained on the original and two ConAug views."""

from __future__ import annotations

from typing import Any

import torch

from modules.model_vision import BaseVision
from modules.projection_head import ProjectionHead
from utils import Config

VIEW_NAMES = ('vision', 'vision_aug1', 'vision_aug2')


class ConCLR_Vision(BaseVision):
    """BaseVision (`backbone`, `attention`, `cls`) + `projection_head`; identical to BaseVision on one batch."""

    def __init__(self, config: Config):
        super().__init__(config)
        weight = config.model_vision_loss_weight
        if isinstance(weight, list):
            if len(weight) != 3:
                raise ValueError(f'model.vision.loss_weight for ConCLR needs 3 values [orig, aug1, aug2], got {weight}')
            self.view_weights = [float(w) for w in weight]
        else:  # one number: the original's weight, each ConAug view at half of it as in the reproduction
            self.view_weights = [float(weight), 0.5 * weight, 0.5 * weight]
        self.loss_weight = self.view_weights[0]
        self.projection_head = ProjectionHead(config.model_vision_d_model, config.model_projection_channels,
                                              config.model_projection_head)

    def forward(self, images: torch.Tensor, aug1: torch.Tensor | None = None,
                aug2: torch.Tensor | None = None, *args: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """One batch -> the `vision` output; three batches -> one pass over all 3N images, split in three."""
        if aug1 is None or aug2 is None:
            return super().forward(images)
        n = images.shape[0]
        batch = torch.cat([images, aug1, aug2])  # recognise() lays it out like the stem weights
        attn_vecs, attn_scores, logits = self.recognise(batch)
        outputs = []
        for k, (name, weight) in enumerate(zip(VIEW_NAMES, self.view_weights)):
            part = slice(k * n, (k + 1) * n)
            out = self.output(attn_vecs[part], attn_scores[part], logits[part], weight, name)
            if k > 0:
                out['embedding'] = self.projection_head(attn_vecs[part])
            outputs.append(out)
        return outputs
