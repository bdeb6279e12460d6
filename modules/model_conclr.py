"""ConCLR_Vision: ABINet-Vision plus a projection head, trained on the original and two ConAug views."""

from __future__ import annotations

from typing import Any

import torch

from configuration import Config
from modules.model_vision import BaseVision
from modules.projection_head import ProjectionHead

VIEWS = 3  # the original batch and two ConAug views


class ConCLR_Vision(BaseVision):
    """BaseVision (`backbone`, `attention`, `cls`) + `projection_head`; identical to BaseVision on one batch."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.projection_head = ProjectionHead(config.model_vision_d_model, config.model_projection_channels,
                                              config.model_projection_head)

    def forward(self, images: torch.Tensor, aug1: torch.Tensor | None = None,
                aug2: torch.Tensor | None = None, *args: Any
                ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """One batch -> the `vision` output; three batches -> one pass over all 3N images, split in three."""
        if aug1 is None or aug2 is None:
            return super().forward(images)
        n = images.shape[0]
        batch = torch.cat([images, aug1, aug2])  # recognise() lays it out like the stem weights
        attn_vecs, attn_scores, logits = self.recognise(batch)
        outputs = []
        for k in range(VIEWS):
            part = slice(k * n, (k + 1) * n)
            out = self.output(attn_vecs[part], attn_scores[part], logits[part])
            if k > 0:
                out['embedding'] = self.projection_head(attn_vecs[part])
            outputs.append(out)
        return outputs
