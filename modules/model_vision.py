"""BaseVision: the ABINet vision model (backbone -> attention -> linear classifier)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from configuration import Config
from modules.attention import Attention, PositionAttention
from modules.backbone import ResTransformer
from modules.decoding import pt_lengths
from modules.memory_format import dense_like
from modules.resnet import ResNet45
from utils import CharsetMapper


def _feature_size(config: Config) -> tuple[int, int]:
    return config.dataset_image_height // 4, config.dataset_image_width // 4


class BaseVision(nn.Module):
    """ABINet-Vision; every width and depth comes from `model.vision.*` (defaults are the official ones)."""

    def __init__(self, config: Config):
        super().__init__()
        self.max_length = config.dataset_max_length + 1
        self.num_classes = CharsetMapper(config.dataset_charset_path, config.dataset_max_length).num_classes
        d_model = config.model_vision_d_model
        feature_size = _feature_size(config)
        widths, layers = config.model_vision_resnet_widths, config.model_vision_resnet_layers

        if config.model_vision_backbone == 'transformer':
            self.backbone = ResTransformer(d_model, config.model_vision_nhead, config.model_vision_d_inner,
                                           config.model_vision_dropout, config.model_vision_activation,
                                           config.model_vision_backbone_ln, feature_size, widths, layers,
                                           config.model_vision_fast_dropout)
        elif config.model_vision_backbone == 'resnet':
            if widths[-1] != d_model:
                raise ValueError(f'model.vision.d_model ({d_model}) must equal the last ResNet width ({widths[-1]})')
            self.backbone = ResNet45(widths, layers)
        else:
            raise ValueError(f"model.vision.backbone must be 'transformer' or 'resnet', "
                             f"got {config.model_vision_backbone!r}")

        if config.model_vision_attention == 'position':
            self.attention = PositionAttention(self.max_length, d_model, config.model_vision_attention_channels,
                                               feature_size)
        elif config.model_vision_attention == 'attention':
            self.attention = Attention(self.max_length, d_model, feature_size[0] * feature_size[1])
        else:
            raise ValueError(f"model.vision.attention must be 'position' or 'attention', "
                             f"got {config.model_vision_attention!r}")
        self.cls = nn.Linear(d_model, self.num_classes)

    def stem_weight(self) -> torch.Tensor:
        """The weight of the first convolution (its memory format is the one the input batch is given)."""
        resnet = getattr(self.backbone, 'resnet', self.backbone)
        return resnet.conv1.weight

    def recognise(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images N x 3 x H x W -> (attn_vecs N x T x E, attn_scores N x T x h x w, logits N x T x C).

        The batch is made dense in the stem weight's memory format first (a no-op for a contiguous batch and
        NCHW weights); a non-contiguous batch is never fed to the backward pass (it crashed torch 2.14 on the CPU).
        """
        features = self.backbone(dense_like(images, self.stem_weight()))
        attn_vecs, attn_scores = self.attention(features)
        return attn_vecs, attn_scores, self.cls(attn_vecs)

    @staticmethod
    def output(attn_vecs: torch.Tensor, attn_scores: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ABINet output dict of one recognition head (tensors only: the loss holds weights and names)."""
        return {'feature': attn_vecs, 'logits': logits, 'pt_lengths': pt_lengths(logits), 'attn_scores': attn_scores}

    def forward(self, images: torch.Tensor, *args: Any) -> dict[str, torch.Tensor]:
        """images N x 3 x H x W -> the output dict (further arguments are ignored)."""
        return self.output(*self.recognise(images))
