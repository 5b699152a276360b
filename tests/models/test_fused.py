"""Fused CPU ResNet blocks: same outputs as the folded blocks they replace."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, resnet18

from wsss.methods.cam_baseline import _fold_batchnorms
from wsss.models.fused import FusedBlock, FusedStem, fuse_blocks
from wsss.ops.winograd import WinogradConv2d


def _randomise_bn(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return module.eval()


@pytest.mark.parametrize("block", [
    lambda: Bottleneck(16, 4),
    lambda: Bottleneck(8, 4, stride=2, downsample=nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False),
                                                                nn.BatchNorm2d(16))),
    lambda: BasicBlock(8, 8),
    lambda: BasicBlock(4, 8, stride=2, downsample=nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False),
                                                                nn.BatchNorm2d(8))),
])
@pytest.mark.parametrize("winograd", [False, True])
def test_fused_block_equals_the_block(block, winograd) -> None:
    original = _randomise_bn(block())
    folded = copy.deepcopy(original)
    _fold_batchnorms(folded)
    if winograd:  # the blocks' stride-1 3x3 convolutions as Winograd, as `inference_model` does
        for name, child in list(folded.named_children()):
            if WinogradConv2d.eligible(child):
                setattr(folded, name, WinogradConv2d(child))
    fused = FusedBlock(folded).to(memory_format=torch.channels_last)
    x = torch.randn(2, original.conv1.in_channels, 11, 14).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, got = original(x), fused(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_fuse_blocks_rewrites_a_folded_resnet() -> None:
    net = _randomise_bn(resnet18())
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    body = nn.Sequential(net.layer1, net.layer2)
    model = nn.Module()
    model.stem, model.body = stem, body
    prepared = copy.deepcopy(model)
    _fold_batchnorms(prepared)
    fuse_blocks(prepared)
    assert isinstance(prepared.stem, FusedStem)
    assert sum(isinstance(m, FusedBlock) for m in prepared.modules()) == 4
    x = torch.randn(1, 3, 37, 45)
    with torch.inference_mode():
        expected = body(stem(x))
        got = prepared.body(prepared.stem(x))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_unfolded_block_is_left_alone() -> None:
    block = Bottleneck(16, 4)  # BatchNorms not folded: nothing to fuse
    holder = nn.Sequential(block)
    fuse_blocks(holder)
    assert holder[0] is block
    with pytest.raises(ValueError, match="folded BatchNorms"):
        FusedBlock(block)


def test_fused_block_with_winograd_on_a_map_too_small_for_it() -> None:
    # conv1 (3x3, 4 → 64) sees one tile: `WinogradConv2d.direct`, run as a fused oneDNN conv.
    original = _randomise_bn(BasicBlock(4, 64, downsample=nn.Sequential(
        nn.Conv2d(4, 64, 1, bias=False), nn.BatchNorm2d(64))))
    folded = copy.deepcopy(original)
    _fold_batchnorms(folded)
    folded.conv1, folded.conv2 = WinogradConv2d(folded.conv1), WinogradConv2d(folded.conv2)
    fused = FusedBlock(folded).to(memory_format=torch.channels_last)
    x = torch.randn(1, 4, 3, 4).contiguous(memory_format=torch.channels_last)
    assert folded.conv1.direct(x)
    with torch.inference_mode():
        expected, got = original(x), fused(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
