"""AMN network (arXiv:2203.16045): backbone, label conditioning, dropout + summed ASPP head.

Follows `gaviotas/AMN: net/resnet50_amn.py` (`Net`, `_ASPP`, `CAM`): the features after one
backbone stage (layer4 in the paper) are multiplied channel-wise by `Linear(C → channels)` of the
label vector; a `Dropout(0.1)` and four parallel dilated 3×3 convolutions, whose outputs are
summed, give C + 1 logits per pixel (channel 0 = background).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

LabelInput = Literal["label", "ones", "noisy_label"]


class ASPP(nn.Module):
    """DeepLab-v2 ASPP: parallel 3×3 convolutions (dilation = padding) whose outputs are summed.

    Weights N(0, 0.01), biases 0, no BatchNorm or ReLU (AMN `_ASPP`).
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=d, dilation=d, bias=True)
            for d in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)  # type: ignore[return-value]


class AMN(nn.Module):
    """Per-pixel classifier conditioned on the image-level label.

    Args:
        backbone: a four-stage backbone (`wsss.models.backbones`), output stride 16 in AMN.
        num_classes: C foreground classes; the head predicts C + 1 channels.
        lc_layer: backbone stage (1..4) after which label conditioning multiplies the features
            (paper Table 2; AMN: 4), or None for no conditioning (the "PCL only" ablation).
        label_input: what the conditioning encodes (supplementary Table A.1): "label" (the
            multi-hot label, AMN), "ones" (an all-ones vector) or "noisy_label" (label plus
            Gaussian noise of std `noise_std`, drawn anew at every call).
        noise_std: the noise of "noisy_label" (the paper does not give its distribution).
        dropout: dropout probability before the head (AMN: 0.1).
        dilations: ASPP dilations (AMN: 6, 12, 18, 24).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        num_classes: int,
        lc_layer: int | None = 4,
        label_input: LabelInput = "label",
        noise_std: float = 0.5,
        dropout: float = 0.1,
        dilations: Sequence[int] = (6, 12, 18, 24),
    ) -> None:
        super().__init__()
        if lc_layer is not None and lc_layer not in (1, 2, 3, 4):
            raise ValueError(f"lc_layer must be 1..4 or None, got {lc_layer}")
        if label_input not in ("label", "ones", "noisy_label"):
            raise ValueError(f"label_input must be label, ones or noisy_label, got {label_input!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.lc_layer = lc_layer
        self.label_input = label_input
        self.noise_std = noise_std
        self.label_enc = (nn.Linear(num_classes, backbone.out_channels[lc_layer - 1])
                          if lc_layer is not None else None)
        self.dropout = nn.Dropout(dropout)
        self.head = ASPP(backbone.out_channels[-1], num_classes + 1, dilations)

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B, C) → channel weights z (B, D) = Linear(encoded labels), no activation."""
        assert self.label_enc is not None
        if self.label_input == "ones":
            labels = torch.ones_like(labels)
        elif self.label_input == "noisy_label":
            labels = labels + self.noise_std * torch.randn_like(labels)
        return self.label_enc(labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), labels (B, C) multi-hot → logits (B, C + 1, H/s, W/s)."""
        x = images
        for index, stage in enumerate(self.backbone.stage_modules(), start=1):
            x = stage(x)
            if index == self.lc_layer:
                x = x * self.condition(labels)[:, :, None, None]
        return self.head(self.dropout(x))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone parameters, head + label-encoder parameters)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        new = list(self.head.parameters())
        if self.label_enc is not None:
            new += list(self.label_enc.parameters())
        return backbone, new


__all__ = ["AMN", "ASPP", "LabelInput"]
