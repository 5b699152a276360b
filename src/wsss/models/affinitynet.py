"""AffinityNet (PSA, arXiv:1803.10464): pixel-affinity features from a backbone's last three maps.

Follows `jiwoon-ahn/psa: network/resnet38_aff.py` (`Net`): 1×1 convolutions without bias map the
last three feature maps (ResNet-38: `conv4` 512 ch, `conv5` 1024 ch, `conv6` 4096 ch, all at
stride 8) to 64, 128 and 256 channels with ELU, their concatenation (448) goes through a 1×1
convolution and ELU. The backbone is trained with the head (not detached). Any registered
backbone works: the three maps are its outputs 2-4 (ResNet: layer2, layer3, layer4), resized to
the last one's size when their strides differ. The pair affinities are computed from the
features by `wsss.ops.affinity.feature_affinity` / `feature_pair_affinity`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# PSA's widths: f8_3, f8_4, f8_5 → 64 + 128 + 256 = 448 = f9.
_TAP_WIDTHS = (64, 128, 256)


class AffinityNet(nn.Module):
    """Affinity features (B, 448, h, w) at the backbone's output stride.

    Args:
        backbone: a `wsss.models.backbones` backbone returning four maps with `out_channels`;
            the last three are used.
    """

    def __init__(self, *, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        in_channels = list(backbone.out_channels)[1:]
        self.taps = nn.ModuleList(nn.Conv2d(c_in, c_out, 1, bias=False)
                                  for c_in, c_out in zip(in_channels, _TAP_WIDTHS, strict=True))
        width = sum(_TAP_WIDTHS)
        self.fuse = nn.Conv2d(width, width, 1, bias=False)
        for conv in self.taps:
            nn.init.kaiming_normal_(conv.weight)
        # PSA: Xavier-uniform with gain 4 on f9, so the initial features spread widely and the
        # affinities exp(−mean |Δf|) start away from 1.
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)
        self.out_channels = width

    @property
    def output_stride(self) -> int:
        return int(getattr(self.backbone, "output_stride", 8))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) → features (B, 448, h, w), (h, w) = the last backbone map's size."""
        maps = self.backbone(images)[1:]
        size = maps[-1].shape[-2:]
        parts = []
        for conv, x in zip(self.taps, maps, strict=True):
            y = F.elu(conv(x))
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            parts.append(y)
        return F.elu(self.fuse(torch.cat(parts, dim=1)))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new layers) that require gradients; PSA trains the new layers
        at 10× the backbone learning rate."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for m in (self.taps, self.fuse) for p in m.parameters() if p.requires_grad]
        return backbone, head
