"""VGG16 at output stride 8 as used by 1-Stage (arXiv:2005.08104, appendix F).

Follows `visinf/1-stage-wseg: models/backbones/vgg16d.py`: 3x3/stride-2 max pools after blocks
1-3, a stride-1 pool after block 4, block 5 dilated by 2, then `fc6` (3x3, 512 → 1024) and `fc7`
(1x1, 1024 → 1024) as convolutions. ImageNet weights ("imagenet") fill the 13 convolutions from
torchvision's VGG16; `fc6`/`fc7` have other shapes than torchvision's classifier and start random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss.models.backbones import BACKBONES, _fetch_torchvision_weights, load_pretrained

__all__ = ["VGG16Backbone", "vgg16"]

_CONVS = (("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
          ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
          ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
          ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512))
# Index of each convolution in torchvision's `vgg16().features`.
_TORCHVISION_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class VGG16Backbone(nn.Module):
    """VGG16 returning [conv3_3 (256, stride 4), conv4_3 (512, 8), conv5_3 (512, 8),
    fc7 (1024, 8)] (sizes rounded up)."""

    def __init__(self, *, output_stride: int = 8) -> None:
        super().__init__()
        if output_stride != 8:
            raise ValueError(f"vgg16 has output stride 8 only, got {output_stride}")
        for name, cin, cout in _CONVS:
            dilation = 2 if name.startswith("conv5") else 1
            setattr(self, name, nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation))
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=1)
        self.drop6 = nn.Dropout2d(0.5)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.out_channels: list[int] = [256, 512, 512, 1024]
        self.output_stride = 8

    def _block(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        for name in names:
            x = F.relu(getattr(self, name)(x))
        return x

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) → four maps (see the class docstring)."""
        x = self._block(images, ("conv1_1", "conv1_2"))
        x = self._block(F.max_pool2d(x, 3, 2, 1), ("conv2_1", "conv2_2"))
        conv3 = self._block(F.max_pool2d(x, 3, 2, 1), ("conv3_1", "conv3_2", "conv3_3"))
        conv4 = self._block(F.max_pool2d(conv3, 3, 2, 1), ("conv4_1", "conv4_2", "conv4_3"))
        conv5 = self._block(F.max_pool2d(conv4, 3, 1, 1), ("conv5_1", "conv5_2", "conv5_3"))
        fc7 = F.relu(self.fc7(self.drop6(F.relu(self.fc6(conv5)))))
        return [conv3, conv4, conv5, fc7]


@BACKBONES.register("vgg16")
def vgg16(*, output_stride: int = 8, pretrained: str = "none", frozen_bn: bool = False
          ) -> VGG16Backbone:
    """VGG16 (no BatchNorm, so `frozen_bn` has no effect); "imagenet" loads torchvision's
    convolutions, a path loads a full `VGG16Backbone` state dict."""
    del frozen_bn
    net = VGG16Backbone(output_stride=output_stride)
    if pretrained == "imagenet":
        import torchvision

        tv = _fetch_torchvision_weights(torchvision.models.VGG16_Weights.IMAGENET1K_V1)
        state = {}
        for (name, _, _), index in zip(_CONVS, _TORCHVISION_INDEX):
            state[f"{name}.weight"] = tv[f"features.{index}.weight"]
            state[f"{name}.bias"] = tv[f"features.{index}.bias"]
        net.load_state_dict(state, strict=False)  # fc6 / fc7 stay random
    else:
        load_pretrained(net, pretrained, backbone="vgg16")
    return net
