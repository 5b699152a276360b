"""IRNet (arXiv:1904.05044): class-boundary and displacement branches on a frozen backbone.

Follows `jiwoon-ahn/irn: net/resnet50_irn.py` (`Net`, `EdgeDisplacement`): five feature levels
(stem /4, layer1 /4, layer2 /8, layer3 /16, layer4 /16 at output stride 16), all detached; 1×1
convolutions without bias, GroupNorm and ReLU; the boundary head upsamples before its ReLU. The
widths are IRN's whatever the backbone, so a ResNet-18 backbone works as well as a ResNet-50.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _branch(in_ch: int, out_ch: int, groups: int, scale: int, *, relu_after_up: bool
            ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 1, bias=False),
                               nn.GroupNorm(groups, out_ch)]
    if scale > 1:
        layers.append(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False))
    if relu_after_up or scale == 1:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class IRNet(nn.Module):
    """Boundary map and displacement field at stride 4 from a frozen backbone.

    Args:
        backbone: a `wsss.models.backbones.ResNetBackbone` (output stride 16); its weights never
            train and it stays in eval mode (running BatchNorm statistics), whatever `train()`.
    """

    def __init__(self, *, backbone: nn.Module) -> None:
        super().__init__()
        if getattr(backbone, "output_stride", 16) != 16:
            raise ValueError("IRNet expects an output-stride-16 backbone")
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        stem_ch = backbone.stem[0].out_channels
        c1, c2, c3, c4 = backbone.out_channels
        # Boundary branch (IRN edge1..edge6): strides 4, 4, 8, 16, 16 → all at stride 4.
        self.edge1 = _branch(stem_ch, 32, 4, 1, relu_after_up=True)
        self.edge2 = _branch(c1, 32, 4, 1, relu_after_up=True)
        self.edge3 = _branch(c2, 32, 4, 2, relu_after_up=True)
        self.edge4 = _branch(c3, 32, 4, 4, relu_after_up=True)
        self.edge5 = _branch(c4, 32, 4, 4, relu_after_up=True)
        self.edge6 = nn.Conv2d(32 * 5, 1, 1, bias=True)
        # Displacement branch (IRN dp1..dp7).
        self.dp1 = _branch(stem_ch, 64, 8, 1, relu_after_up=True)
        self.dp2 = _branch(c1, 128, 16, 1, relu_after_up=True)
        self.dp3 = _branch(c2, 256, 16, 1, relu_after_up=True)
        self.dp4 = _branch(c3, 256, 16, 2, relu_after_up=True)
        self.dp5 = _branch(c4, 256, 16, 2, relu_after_up=True)
        self.dp6 = _branch(768, 256, 16, 2, relu_after_up=True)
        self.dp7 = nn.Sequential(
            nn.Conv2d(64 + 128 + 256, 256, 1, bias=False), nn.GroupNorm(16, 256),
            nn.ReLU(inplace=True), nn.Conv2d(256, 2, 1, bias=False),
        )
        self.edge_layers = nn.ModuleList([self.edge1, self.edge2, self.edge3, self.edge4,
                                          self.edge5, self.edge6])
        self.dp_layers = nn.ModuleList([self.dp1, self.dp2, self.dp3, self.dp4, self.dp5,
                                        self.dp6, self.dp7])
        # Mean displacement over the training images (IRN `MeanShift`); used for instances only.
        self.register_buffer("mean_displacement", torch.zeros(2))

    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) → the five detached feature levels."""
        b = self.backbone
        with torch.no_grad():
            x0 = b.stem(images)
            x1 = b.layer1(x0)
            x2 = b.layer2(x1)
            x3 = b.layer3(x2)
            x4 = b.layer4(x3)
        return [x.detach() for x in (x0, x1, x2, x3, x4)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) → edge logits (B, 1, h, w) and displacements (B, 2, h, w) at
        stride 4, (h, w) = (⌈H/4⌉, ⌈W/4⌉)."""
        x0, x1, x2, x3, x4 = self.features(images)
        h, w = x1.shape[-2:]
        edges = [self.edge1(x0), self.edge2(x1), self.edge3(x2)[..., :h, :w],
                 self.edge4(x3)[..., :h, :w], self.edge5(x4)[..., :h, :w]]
        edge = self.edge6(torch.cat(edges, dim=1))
        h8, w8 = x2.shape[-2:]
        d3 = self.dp3(x2)
        d4 = self.dp4(x3)[..., :h8, :w8]
        d5 = self.dp5(x4)[..., :h8, :w8]
        d6 = self.dp6(torch.cat([d3, d4, d5], dim=1))[..., :h, :w]
        disp = self.dp7(torch.cat([self.dp1(x0), self.dp2(x1), d6], dim=1))
        if not self.training:
            disp = disp - self.mean_displacement.view(1, 2, 1, 1)
        return edge, disp

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(boundary-branch parameters, displacement-branch parameters)."""
        return list(self.edge_layers.parameters()), list(self.dp_layers.parameters())

    @torch.no_grad()
    def boundary(self, images: torch.Tensor, size: tuple[int, int] | None = None, *,
                 pad_to: int = 512) -> torch.Tensor:
        """Flip-averaged boundary probabilities (IRN `EdgeDisplacement`).

        The image and its mirror are zero-padded right and bottom to `pad_to` × `pad_to` (after
        normalisation, as `EdgeDisplacement(crop_size=512)`), run as one batch and cropped back
        to the stride-4 size. The padding changes the map, not only the batching: GroupNorm's
        statistics include the padded area. A side above `pad_to` is not padded (the official
        code assumes sides ≤ 512); `pad_to=0` runs the unpadded image.

        Args:
            images: (1, 3, H, W) one normalised image.
            size: output (h, w), default the stride-4 size ((H − 1) // 4 + 1, (W − 1) // 4 + 1).
            pad_to: side of the zero-padded canvas; 0 = no padding.

        Returns:
            (h, w) sigmoid of the mean of the edge logits of the image and its mirror.
        """
        height, width = images.shape[-2:]
        if size is None:
            size = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
        views = torch.cat([images, images.flip(-1)], dim=0)
        views = F.pad(views, [0, max(pad_to - width, 0), 0, max(pad_to - height, 0)])
        edge, _ = self(views)
        edge = edge[..., : size[0], : size[1]]
        if edge.shape[-2:] != tuple(size):
            edge = F.interpolate(edge, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid((edge[0, 0] + edge[1, 0].flip(-1)) / 2)


def stride4_size(size: tuple[int, int]) -> tuple[int, int]:
    """((H − 1) // 4 + 1, (W − 1) // 4 + 1): IRN's stride-4 map size."""
    return (size[0] - 1) // 4 + 1, (size[1] - 1) // 4 + 1


__all__ = ["IRNet", "stride4_size"]
