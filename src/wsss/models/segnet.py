"""DeepLab segmentation networks over any registered backbone: v1 (large FOV), v2 (ASPP), v3+.

- DeepLab-v2 (arXiv:1606.00915): four parallel 3x3 atrous classifiers, rates 6/12/18/24 at output
  stride 8, summed (`kazuto1011/deeplab-pytorch: libs/models/deeplabv2.py`, the network AdvCAM
  and AMN train on their pseudo-masks, amn.md §4).
- DeepLab-v1 large-FOV head on ResNet-38 (arXiv:1412.7062; the ICAM/SEAM final model,
  importance_sampling.md §5.4): 3x3 conv dilation 12 → 512 + BN + ReLU, 1x1 512 → 512 + BN +
  ReLU, dropout 0.5, 1x1 → classes.
- DeepLabv3+ (arXiv:1802.02611; the head of `visinf/1-stage-wseg: models/stage_net.py` without
  its gate and GCI, single_stage.md §2): ASPP (1x1, three 3x3 atrous, image pooling) → 256, a
  decoder fusing 48 channels of the stride-4 features, two 3x3 convs, 1x1 → classes.

Atrous rates are given for output stride 8 and scaled by 8 / output_stride, so that the field of
view in input pixels stays the same at output stride 16 (v3+'s 12/24/36 become its usual 6/12/18).
A backbone is any module returning four feature maps (finest first) with `out_channels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.models.backbones import build_backbone
from wsss.ops.msc import msc_logits, msc_max

__all__ = ["ARCHS", "DeepLabV1Head", "DeepLabV2Head", "DeepLabV3PlusHead", "SegNet",
           "build_segnet", "freeze_batchnorm_affine", "scaled_rates"]


def scaled_rates(rates: Sequence[int], output_stride: int) -> list[int]:
    """Atrous rates given at output stride 8, rescaled to `output_stride` (at least 1)."""
    return [max(1, round(r * 8 / output_stride)) for r in rates]


class DeepLabV2Head(nn.Module):
    """ASPP-v2: one 3x3 atrous classifier per rate on the last feature map, outputs summed.

    Weights are drawn from N(0, 0.01²) and biases start at 0, as in the Caffe DeepLab-v2.
    """

    def __init__(self, *, in_channels: Sequence[int], num_outputs: int,
                 rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels[-1], num_outputs, 3, padding=r, dilation=r) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: the backbone's four maps → logits (B, K, h, w) at the last map's size."""
        x = features[-1]
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class DeepLabV1Head(nn.Module):
    """Large-FOV head (ICAM/SEAM DeepLab-v1): dilated 3x3 conv, 1x1 conv, dropout, classifier."""

    def __init__(self, *, in_channels: Sequence[int], num_outputs: int, rate: int = 12,
                 channels: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels[-1], channels, 3, dilation=rate),
            _conv_bn_relu(channels, channels, 1),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(channels, num_outputs, 1)
        _kaiming(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features → logits (B, K, h, w) at the last map's size."""
        return self.classifier(self.body(features[-1]))


class DeepLabV3PlusHead(nn.Module):
    """ASPP (1x1, 3x3 atrous, image pooling) + decoder on the first (stride-4) feature map.

    The image-pooling branch has no BatchNorm (a conv with bias + ReLU) so that a batch of one
    trains: its BN would see a single value per channel.
    """

    def __init__(self, *, in_channels: Sequence[int], num_outputs: int,
                 rates: Sequence[int] = (12, 24, 36), channels: int = 256,
                 low_level_channels: int = 48) -> None:
        super().__init__()
        deep = in_channels[-1]
        self.aspp = nn.ModuleList([_conv_bn_relu(deep, channels, 1)] + [
            _conv_bn_relu(deep, channels, 3, dilation=r) for r in rates
        ])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(deep, channels, 1),
                                  nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            _conv_bn_relu(channels * (len(rates) + 2), channels, 1), nn.Dropout(0.5)
        )
        self.skip = _conv_bn_relu(in_channels[0], low_level_channels, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(channels + low_level_channels, channels, 3), nn.Dropout(0.5),
            _conv_bn_relu(channels, channels, 3), nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(channels, num_outputs, 1)
        _kaiming(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features → logits (B, K, h0, w0) at the first (finest) map's size."""
        x = features[-1]
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        x = self.project(torch.cat([branch(x) for branch in self.aspp] + [pooled], dim=1))
        low = features[0]
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([x, self.skip(low)], dim=1)))


def _kaiming(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegNet(nn.Module):
    """Backbone + DeepLab head; logits are upsampled (bilinear) to the input size.

    Args:
        backbone: returns four maps (finest first) and exposes `out_channels`.
        head: maps the four maps to logits (B, K, h, w), K = C + 1 (background at channel 0).
    """

    def __init__(self, *, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) normalised → logits (B, C + 1, h, w) at the head's stride."""
        return self.head(self.backbone(images))

    def forward(self, images: torch.Tensor, *, msc_scales: Sequence[float] | None = None
                ) -> torch.Tensor | list[torch.Tensor]:
        """images (B, 3, H, W) normalised → logits (B, C + 1, H, W) upsampled (bilinear).

        With `msc_scales` (DeepLab-v2 MSC, `deeplab-pytorch: libs/models/msc.py`): the list
        [input, each rescaled input, pixel-wise max] of logits at the head's stride, not
        upsampled, for the multi-scale loss and the max-merged test (`wsss.ops.msc`).
        """
        if msc_scales is not None:
            pyramid = msc_logits(self.logits, images, msc_scales)
            return pyramid + [msc_max(pyramid)]
        return F.interpolate(self.logits(images), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that train, head parameters): the head gets the higher lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, [p for p in self.head.parameters() if p.requires_grad]

    def head_weights_and_biases(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The head's trainable parameters as (all but the conv biases, the conv biases):
        deeplab-pytorch trains the ASPP biases at 2× the head's lr, without weight decay."""
        biases = [m.bias for m in self.head.modules()
                  if isinstance(m, nn.Conv2d) and m.bias is not None and m.bias.requires_grad]
        ids = {id(p) for p in biases}
        rest = [p for p in self.head.parameters() if p.requires_grad and id(p) not in ids]
        return rest, biases


def freeze_batchnorm_affine(module: nn.Module) -> nn.Module:
    """Stop training the affine weight and bias of every BatchNorm in `module` (in place).

    deeplab-pytorch optimises only the convolutions of the backbone (`main.py get_params`),
    so the BatchNorm scales and shifts keep their pre-trained values.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    return module


ARCHS: dict[str, type[nn.Module]] = {
    "deeplabv1": DeepLabV1Head,
    "deeplabv2": DeepLabV2Head,
    "deeplabv3plus": DeepLabV3PlusHead,
}
_DEFAULT_RATES = {"deeplabv1": (12,), "deeplabv2": (6, 12, 18, 24), "deeplabv3plus": (12, 24, 36)}


def build_segnet(
    *,
    arch: str,
    backbone: str,
    num_classes: int,
    output_stride: int = 8,
    pretrained: str = "none",
    frozen_bn: bool = False,
    frozen_bn_affine: bool = False,
) -> SegNet:
    """A DeepLab network predicting background + `num_classes` foreground classes.

    Args:
        arch: "deeplabv1", "deeplabv2" or "deeplabv3plus".
        backbone: a registered backbone name (`wsss.models.backbones.BACKBONES`).
        num_classes: C, foreground classes; the network outputs C + 1 channels.
        output_stride: 8 or 16 (atrous rates are rescaled, see the module docstring).
        pretrained, frozen_bn: passed to the backbone builder.
        frozen_bn_affine: the backbone's BatchNorm weights and biases are not trained
            (`freeze_batchnorm_affine`, deeplab-pytorch).

    Example:
        >>> net = build_segnet(arch="deeplabv2", backbone="resnet18", num_classes=20)
        >>> net(torch.zeros(1, 3, 65, 65)).shape
        torch.Size([1, 21, 65, 65])
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown segnet arch {arch!r}; valid: {', '.join(sorted(ARCHS))}")
    body = build_backbone(backbone, output_stride=output_stride, pretrained=pretrained,
                          frozen_bn=frozen_bn)
    if frozen_bn_affine:
        freeze_batchnorm_affine(body)
    rates = scaled_rates(_DEFAULT_RATES[arch], output_stride)
    channels = list(body.out_channels)
    if arch == "deeplabv1":
        head = DeepLabV1Head(in_channels=channels, num_outputs=num_classes + 1, rate=rates[0])
    else:
        head = ARCHS[arch](in_channels=channels, num_outputs=num_classes + 1, rates=rates)
    return SegNet(backbone=body, head=head)
