"""Image classifier whose 1x1 classifier weights turn backbone features into CAMs (IRN §2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CamClassifier(nn.Module):
    """Backbone → global average pooling → 1x1 convolution without bias.

    Args:
        backbone: a module returning four feature maps (see `wsss.models.backbones`).
        num_classes: C, the number of foreground classes.
        detach_stages: how many leading backbone stages receive no gradient (IRN: 2, i.e.
            conv1..layer2 are detached; 0 trains everything, as needed from scratch).
        dropout: Dropout2d probability on the features before the pooling, in training only
            (PSA `resnet38_cls.py`: 0.5; IRN: 0). The CAMs never see it.
    """

    def __init__(self, *, backbone: nn.Module, num_classes: int, detach_stages: int = 0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = float(dropout)
        self.backbone = backbone
        self.num_classes = num_classes
        self.detach_stages = detach_stages
        channels = backbone.out_channels[-1]
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1, bias=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) → last-stage features (B, D, H/s, W/s)."""
        if self.detach_stages <= 0:
            return self.backbone(images)[-1]
        stages = self.backbone.stage_modules()
        x = images
        for index, stage in enumerate(stages):
            x = stage(x)
            if index + 1 == self.detach_stages:
                x = x.detach()
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) → logits (B, C)."""
        feats = self.features(images)
        if self.dropout > 0.0:
            feats = F.dropout2d(feats, self.dropout, training=self.training)
        pooled = feats.mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) → raw CAMs (B, C, H/s, W/s), ReLU'd, not normalised."""
        feats = self.features(images)
        return F.relu(F.conv2d(feats, self.classifier.weight))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that train, new-head parameters)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())
