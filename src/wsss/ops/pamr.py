"""Pixel-Adaptive Mask Refinement (PAMR) of 1-Stage (arXiv:2005.08104, §3.3).

Re-implements `visinf/1-stage-wseg: models/mods/pamr.py`: an affinity over the 8 neighbours at
each dilation, computed once from the image, then `num_iter` rounds of affinity-weighted
averaging of the masks. All dilations come from one replicate-padded tensor in a single pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PAMR", "local_neighbours", "pamr", "pamr_affinity"]

# Neighbour offsets (dy, dx) in the order of the official shift kernels.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def local_neighbours(x: Tensor, dilations: Sequence[int], *, centre: bool = False) -> Tensor:
    """The 8 neighbours of every pixel at each dilation, with replicate padding.

    Args:
        x: (B, K, H, W).
        dilations: positive ints, e.g. (1, 2, 4, 8, 12, 24).
        centre: also include the pixel itself once per dilation (its 3x3 window has 9 values).

    Returns:
        (B, K, P, H, W) with P = 8·len(dilations) (9·len with `centre`), ordered by dilation,
        then by `_OFFSETS` (the centre first within a dilation when included).
    """
    if not dilations or min(dilations) < 1:
        raise ValueError(f"dilations must be positive ints, got {list(dilations)}")
    h, w = x.shape[-2:]
    pad = max(dilations)
    padded = F.pad(x, [pad] * 4, mode="replicate")
    offsets = ((0, 0),) + _OFFSETS if centre else _OFFSETS
    views = []
    for d in dilations:
        for dy, dx in offsets:
            top, left = pad + dy * d, pad + dx * d
            views.append(padded[..., top:top + h, left:left + w])
    return torch.stack(views, dim=2)


def pamr_affinity(
    images: Tensor,
    *,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    kernel: Literal["code", "paper"] = "code",
) -> Tensor:
    """Softmax affinity over the 8·|D| neighbours.

    kernel "code" (official): k = −|I_i − I_j| / (1e-8 + 0.1·σ_i), σ_i the unbiased standard
    deviation of the 9·|D| values of i's dilated 3x3 windows (centre counted at every dilation);
    "paper" (eq. 6): k = −|I_i − I_j| / (1e-8 + σ_i²). k is averaged over channels, then
    α = softmax over the neighbours.

    Args:
        images: (B, 3, H, W) float (1-Stage: RGB in [0, 1]).

    Returns:
        (B, P, H, W) with P = 8·|D|, non-negative, summing to 1 over P.
    """
    windows = local_neighbours(images, dilations, centre=True)  # (B, 3, 9|D|, H, W)
    sigma = windows.std(dim=2, keepdim=True)
    diff = (local_neighbours(images, dilations) - images.unsqueeze(2)).abs()
    if kernel == "code":
        k = -diff / (1e-8 + 0.1 * sigma)
    elif kernel == "paper":
        k = -diff / (1e-8 + sigma.pow(2))
    else:
        raise ValueError(f"kernel must be 'code' or 'paper', got {kernel!r}")
    return F.softmax(k.mean(dim=1), dim=1)


def pamr(
    images: Tensor,
    masks: Tensor,
    *,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    num_iter: int = 10,
    kernel: Literal["code", "paper"] = "code",
) -> Tensor:
    """Refine masks by iterated affinity-weighted averaging over image-adaptive neighbourhoods.

    Args:
        images: (B, 3, H, W) float; 1-Stage passes the de-normalised RGB crop in [0, 1] resized
            to the mask grid.
        masks: (B, C, h, w) float scores (e.g. softmax probabilities); bilinearly resized
            (align_corners True) to (H, W) first.
        dilations: neighbourhood dilations (paper: 1-2-4-8-12-24).
        num_iter: averaging rounds (paper: 10); 0 returns the resized masks.
        kernel: "code" or "paper" affinity (see `pamr_affinity`).

    Returns:
        (B, C, H, W), device and dtype of `masks`. Every output is a convex combination of input
        values, so constant masks stay constant and distributions stay distributions.
    """
    if images.ndim != 4 or masks.ndim != 4 or images.shape[0] != masks.shape[0]:
        raise ValueError(f"need images (B, 3, H, W) and masks (B, C, h, w), got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    size = images.shape[-2:]
    if masks.shape[-2:] != size:
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=True)
    alpha = pamr_affinity(images.to(masks.dtype), dilations=dilations, kernel=kernel)
    alpha = alpha.unsqueeze(1)  # (B, 1, P, H, W), shared by all mask channels
    for _ in range(num_iter):
        masks = (local_neighbours(masks, dilations) * alpha).sum(dim=2)
    return masks


class PAMR(nn.Module):
    """`pamr` with its settings fixed; no parameters, no gradient needed."""

    def __init__(self, *, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), num_iter: int = 10,
                 kernel: Literal["code", "paper"] = "code") -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.num_iter = num_iter
        self.kernel = kernel

    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        return pamr(images, masks, dilations=self.dilations, num_iter=self.num_iter,
                    kernel=self.kernel)
