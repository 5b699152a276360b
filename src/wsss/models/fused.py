"""CPU inference rewrites of torchvision's ResNet blocks: each convolution runs as one oneDNN
primitive with its ReLU fused, and the last convolution of a block adds the shortcut and applies
the ReLU in the same pass (oneDNN post-ops, the kernels inductor uses for frozen CPU graphs). This
saves the separate element-wise passes over the block's largest tensors; the results are the
same as the unfused block up to float rounding.

Only for inference copies whose BatchNorms are already folded into the convolutions (the blocks'
`bn*` are `nn.Identity`); `fuse_blocks` leaves any other module as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from wsss.ops.winograd import WinogradConv2d

__all__ = ["FusedBlock", "FusedStem", "fuse_blocks", "fused_kernels_available"]


def fused_kernels_available() -> bool:
    """Whether this torch build has oneDNN's fused convolution ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _conv(conv: nn.Module, x: torch.Tensor, relu: bool) -> torch.Tensor:
    """conv(x), then ReLU if `relu`; x (B, C, H, W) → (B, O, H', W')."""
    if isinstance(conv, WinogradConv2d) and not conv.direct(x):
        y = conv(x)
        return y.relu_() if relu else y
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, "relu" if relu else "none", [], "")


def _conv_add_relu(conv: nn.Module, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """ReLU(conv(x) + shortcut), in one oneDNN pass for a plain convolution."""
    if isinstance(conv, WinogradConv2d) and not conv.direct(x):
        return conv(x).add_(shortcut).relu_()
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, shortcut, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
        list(conv.dilation), conv.groups, "add", 1.0, "relu", [], "")


def _foldable(block: nn.Module) -> bool:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if not isinstance(block, (BasicBlock, Bottleneck)):
        return False
    bns = [m for name, m in block.named_children() if name.startswith("bn")]
    down = block.downsample
    plain_down = down is None or (isinstance(down, nn.Sequential) and len(down) == 2
                                  and type(down[0]) is nn.Conv2d and isinstance(down[1], nn.Identity))
    convs = [m for name, m in block.named_children() if name.startswith("conv")]
    return (all(isinstance(m, nn.Identity) for m in bns) and plain_down
            and all(type(c) in (nn.Conv2d, WinogradConv2d) for c in convs))


class FusedBlock(nn.Module):
    """A BasicBlock or Bottleneck with folded BatchNorms: ReLU(convₙ(…ReLU(conv₁(x))) + s(x)),
    s = identity or the 1×1 projection. (B, C, H, W) → (B, O, H/stride, W/stride)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if not _foldable(block):
            raise ValueError(f"FusedBlock needs a ResNet block with folded BatchNorms, got {block}")
        self.convs = nn.ModuleList(m for name, m in block.named_children() if name.startswith("conv"))
        self.shortcut = block.downsample[0] if block.downsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else _conv(self.shortcut, x, relu=False)
        y = x
        for conv in self.convs[:-1]:
            y = _conv(conv, y, relu=True)
        return _conv_add_relu(self.convs[-1], y, shortcut)


class FusedStem(nn.Module):
    """The ResNet stem `Sequential(conv, Identity (folded BN), ReLU, MaxPool)` with the ReLU
    fused into the convolution. (B, 3, H, W) → (B, 64, H/4, W/4)."""

    def __init__(self, stem: nn.Sequential) -> None:
        super().__init__()
        self.conv, self.pool = stem[0], stem[3]

    @staticmethod
    def matches(stem: nn.Module) -> bool:
        return (isinstance(stem, nn.Sequential) and len(stem) == 4 and type(stem[0]) is nn.Conv2d
                and isinstance(stem[1], nn.Identity) and isinstance(stem[2], nn.ReLU)
                and isinstance(stem[3], nn.MaxPool2d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(_conv(self.conv, x, relu=True))


def fuse_blocks(module: nn.Module) -> None:
    """Replace (in place) every foldable ResNet block under `module` by a `FusedBlock`, and a
    `stem` attribute of the stem's shape by a `FusedStem`."""
    for name, child in module.named_children():
        if _foldable(child):
            setattr(module, name, FusedBlock(child))
        elif name == "stem" and FusedStem.matches(child):
            setattr(module, name, FusedStem(child))
        else:
            fuse_blocks(child)
