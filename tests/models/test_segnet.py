"""DeepLab heads: output shapes for every arch and output stride, rates, parameter groups.

`TinyBackbone` (registered as "tiny_test") is any-backbone contract in its smallest form: four
feature maps, finest first, and `out_channels`; the segnet tests use it to stay fast.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.models.backbones import BACKBONES
from wsss.models.segnet import ARCHS, build_segnet, scaled_rates

TINY = "tiny_test"


class TinyBackbone(nn.Module):
    """Four conv stages, strides 4, 8, then `output_stride` (8 or 16) twice."""

    def __init__(self, *, output_stride: int = 8, pretrained: str = "none",
                 frozen_bn: bool = False) -> None:
        super().__init__()
        last = 2 if output_stride == 16 else 1
        spec = [(3, 8, 4), (8, 12, 2), (12, 16, last), (16, 16, 1)]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=1), nn.BatchNorm2d(o), nn.ReLU())
            for i, o, s in spec
        )
        self.out_channels = [o for _, o, _ in spec]
        self.output_stride = output_stride

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps, x = [], images
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def register_tiny() -> str:
    if TINY not in BACKBONES:
        BACKBONES.register(TINY)(TinyBackbone)
    return TINY


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("output_stride", [8, 16])
def test_logits_have_input_size_and_classes_plus_background(arch: str, output_stride: int) -> None:
    torch.manual_seed(0)
    net = build_segnet(arch=arch, backbone=register_tiny(), num_classes=3,
                       output_stride=output_stride)
    net.eval()
    with torch.no_grad():
        logits = net(torch.randn(2, 3, 37, 53))
    assert logits.shape == (2, 4, 37, 53)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_resnet_backbone(arch: str) -> None:
    net = build_segnet(arch=arch, backbone="resnet18", num_classes=2, output_stride=8).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 33, 41)).shape == (1, 3, 33, 41)


def test_batch_of_one_trains_and_groups_cover_all_parameters() -> None:
    net = build_segnet(arch="deeplabv3plus", backbone=register_tiny(), num_classes=2)
    net.train()
    net(torch.randn(1, 3, 32, 32)).sum().backward()  # no BN on the image-pooling branch
    backbone, head = net.param_groups()
    assert len(backbone) + len(head) == len(list(net.parameters()))
    assert {id(p) for p in head} == {id(p) for p in net.head.parameters()}


def test_rates_keep_the_field_of_view() -> None:
    assert scaled_rates((6, 12, 18, 24), 8) == [6, 12, 18, 24]
    assert scaled_rates((12, 24, 36), 16) == [6, 12, 18]
    net = build_segnet(arch="deeplabv2", backbone=register_tiny(), num_classes=1,
                       output_stride=16)
    assert [b.dilation[0] for b in net.head.branches] == [3, 6, 9, 12]


def test_unknown_arch_lists_valid() -> None:
    with pytest.raises(ValueError, match="deeplabv3plus"):
        build_segnet(arch="unet", backbone=register_tiny(), num_classes=2)
