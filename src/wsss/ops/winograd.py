"""Winograd F(4×4, 3×3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", CVPR 2016) for 3×3, stride-1, padding-1 convolutions in CAM inference on the CPU.

Each 4×4 output tile is computed from a 6×6 input tile with 36 multiplications per input/output
channel pair instead of 144: y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A. Over all tiles and channels the
element-wise products are 36 matrix products (tiles × C) · (C × O), one per tile position, so a
3×3 convolution costs 4× fewer multiply-adds plus two memory-bound transforms. The result equals
`F.conv2d(x, w, b, padding=1)` up to float rounding: about 1e-5 of max|y| in float32 (the
transforms' coefficients reach 8 and 1/24), against about 1e-6 for the direct convolution.

Tensors are (B, H, W, C), i.e. the memory of a channels-last (B, C, H, W) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WinogradConv2d", "winograd_conv3x3", "winograd_transforms", "winograd_weight"]

_TILE = 4  # output tile side m
_WINDOW = _TILE + 2  # input tile side m + r - 1
# F(4, 3) with interpolation points 0, ±1, ±2, ∞ (Lavin & Gray, section 4.2).
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
_ALL_ONES_COLUMN = 1 * _WINDOW + 1  # Aᵀ[:, 1] = 1, so (Aᵀ ⊗ Aᵀ)[:, 7] = 1


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """Filter transform U = G g Gᵀ (computed in float64).

    Args:
        weight: (O, C, 3, 3) convolution weight.
    Returns:
        (36, C, O) in the weight's dtype: row-major 6×6 tile position first.
    """
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"winograd_weight needs a (O, C, 3, 3) weight, got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().double(), g)
    return u.reshape(_WINDOW * _WINDOW, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def winograd_transforms(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-D data and output transforms as matrices over flattened tiles.

    Returns:
        (36, 36) Bᵀ ⊗ Bᵀ and (16, 36) Aᵀ ⊗ Aᵀ: V = (Bᵀ⊗Bᵀ)·vec(d), vec(y) = (Aᵀ⊗Aᵀ)·vec(M).
    """
    bt = torch.tensor(_BT, dtype=torch.float64)
    at = torch.tensor(_AT, dtype=torch.float64)
    return (torch.kron(bt, bt).to(dtype=dtype, device=device),
            torch.kron(at, at).to(dtype=dtype, device=device))


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None,
                     transforms: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`F.conv2d(x, w, bias, padding=1)` for a 3×3 weight w, by Winograd F(4×4, 3×3).

    Args:
        x: (B, H, W, C) input (channels-last data; any strides).
        u: (36, C, O) from `winograd_weight(w)`.
        bias: (O,) or None.
        transforms: `winograd_transforms(x.dtype, x.device)`, to skip rebuilding them per call.
    Returns:
        (B, H, W, O), contiguous.
    """
    batch, height, width, channels = x.shape
    if u.dim() != 3 or u.shape[0] != _WINDOW * _WINDOW or u.shape[1] != channels:
        raise ValueError(f"u must be (36, {channels}, O) for a {channels}-channel input, "
                         f"got {tuple(u.shape)}")
    data_t, out_t = transforms if transforms is not None else winograd_transforms(x.dtype, x.device)
    out_channels = u.shape[2]
    tiles_h, tiles_w = -(-height // _TILE), -(-width // _TILE)
    # Zero padding: 1 for the convolution, and up to a whole number of tiles at the far side.
    padded = F.pad(x, (0, 0, 1, tiles_w * _TILE + 1 - width, 1, tiles_h * _TILE + 1 - height))
    s_b, s_h, s_w, s_c = padded.stride()
    windows = padded.as_strided(  # (6, 6, B, tiles_h, tiles_w, C): overlapping 6×6 windows
        (_WINDOW, _WINDOW, batch, tiles_h, tiles_w, channels),
        (s_h, s_w, s_b, _TILE * s_h, _TILE * s_w, s_c))
    tiles = batch * tiles_h * tiles_w
    v = (data_t @ windows.reshape(_WINDOW * _WINDOW, tiles * channels)).view(-1, tiles, channels)
    m = torch.bmm(v, u)  # (36, tiles, O)
    if bias is not None:  # column 7 of Aᵀ ⊗ Aᵀ is all ones: this adds the bias to every output
        m[_ALL_ONES_COLUMN] += bias
    y = (out_t @ m.view(_WINDOW * _WINDOW, tiles * out_channels)).view(
        _TILE, _TILE, batch, tiles_h, tiles_w, out_channels)
    out = y.permute(2, 3, 0, 4, 1, 5).reshape(batch, tiles_h * _TILE, tiles_w * _TILE,
                                              out_channels)
    if tiles_h * _TILE != height or tiles_w * _TILE != width:
        out = out[:, :height, :width].contiguous()
    return out


def direct_is_faster(shape: tuple[int, ...] | torch.Size, out_channels: int) -> bool:
    """Whether a 3×3 convolution to `out_channels` over an input (or output) of `shape`
    (B, C, H, W) has fewer than O/32 4×4 output tiles, where streaming 36 transformed weights per
    channel pair costs more than Winograd saves (measured per layer on a 2-core CPU: 512 channels
    break even at about 14×14, where Winograd runs 0.7× as fast at 8×8 and 2× at 32×32; 256
    channels at about 7×7)."""
    tiles = shape[0] * -(-shape[2] // 4) * -(-shape[3] // 4)
    return tiles * 32 < out_channels


class WinogradConv2d(nn.Module):
    """Inference-only stand-in for a 3×3, stride-1, padding-1, dilation-1, ungrouped `nn.Conv2d`
    (`eligible`), computed by `winograd_conv3x3`. Input and output are (B, C, H, W) tensors;
    the output is in channels-last memory, like the input the CAM inference copy feeds it."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not self.eligible(conv):
            raise ValueError(f"WinogradConv2d needs a 3x3, stride-1, padding-1, dilation-1, "
                             f"ungrouped convolution, got {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # The direct convolution's geometry, as nn.Conv2d names it (`wsss.models.fused`).
        self.padding, self.stride, self.dilation, self.groups = (1, 1), (1, 1), (1, 1), 1
        self.register_buffer("u", winograd_weight(conv.weight))
        # For small maps (`direct`): the 36 transformed weights per channel pair cost more to
        # stream than the multiply-adds they save.
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)
        data_t, out_t = winograd_transforms(conv.weight.dtype, conv.weight.device)
        self.register_buffer("data_t", data_t)
        self.register_buffer("out_t", out_t)

    @staticmethod
    def eligible(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros")

    def direct(self, x: torch.Tensor) -> bool:
        """Whether x (B, C, H, W) is too small for Winograd to pay (`direct_is_faster`)."""
        return direct_is_faster(x.shape, self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, O, H, W)."""
        if self.direct(x):
            return F.conv2d(x, self.weight, self.bias, padding=1)
        y = winograd_conv3x3(x.permute(0, 2, 3, 1), self.u, self.bias, (self.data_t, self.out_t))
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), F(4x4, 3x3)"
