"""Pixel-Adaptive Mask Refinement (PAMR) of 1-Stage (arXiv:2005.08104, §3.3).

Re-implements `visinf/1-stage-wseg: models/mods/pamr.py`: an affinity over the 8 neighbours at
each dilation, computed once from the image, then `num_iter` rounds of affinity-weighted
averaging of the masks. The affinity reduces views of one replicate-padded tensor on the fly
instead of stacking them, and each round is one sparse-matrix product (see `pamr`), which is
more than 10x faster on a CPU than the official shift convolutions (`benchmarks/bench_pamr.py`,
docs/performance.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.ops.threads import single_cpu_thread

__all__ = ["PAMR", "local_neighbours", "neighbour_index", "pamr", "pamr_affinity"]

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


def _shifted(padded: Tensor, pad: int, dy: int, dx: int, d: int, rows: slice, width: int
             ) -> Tensor:
    """The rows `rows` of the map shifted by d·(dy, dx), as a view of the replicate-padded map."""
    top, left = pad + dy * d, pad + dx * d
    return padded[..., top + rows.start:top + rows.stop, left:left + width]


def _row_bands(height: int, row_bytes: int, budget: int = 1 << 20) -> list[slice]:
    """Row bands of about `budget` bytes, so that the 8·|D| passes over a band stay in cache."""
    rows = max(1, min(height, budget // max(1, row_bytes)))
    return [slice(y, min(y + rows, height)) for y in range(0, height, rows)]


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

    The windows are visited as views of one padded tensor and reduced on the fly (two passes
    for σ, as `torch.std`), never stacked into a (B, 3, 9·|D|, H, W) tensor.

    Args:
        images: (B, 3, H, W) float (1-Stage: RGB in [0, 1]).

    Returns:
        (B, P, H, W) with P = 8·|D|, non-negative, summing to 1 over P.
    """
    if kernel not in ("code", "paper"):
        raise ValueError(f"kernel must be 'code' or 'paper', got {kernel!r}")
    if not dilations or min(dilations) < 1:
        raise ValueError(f"dilations must be positive ints, got {list(dilations)}")
    h, w = images.shape[-2:]
    pad = max(dilations)
    padded = F.pad(images, [pad] * 4, mode="replicate")
    rows = slice(0, h)
    window = [(d, dy, dx) for d in dilations for dy, dx in ((0, 0),) + _OFFSETS]
    total = torch.zeros_like(images)
    for d, dy, dx in window:
        total += _shifted(padded, pad, dy, dx, d, rows, w)
    mean = total / len(window)
    sq = torch.zeros_like(images)
    for d, dy, dx in window:
        sq += (_shifted(padded, pad, dy, dx, d, rows, w) - mean).square()
    sigma = (sq / (len(window) - 1)).sqrt()
    scale = 1e-8 + 0.1 * sigma if kernel == "code" else 1e-8 + sigma.pow(2)
    logits = images.new_empty((images.shape[0], 8 * len(dilations), h, w))
    p = 0
    for d in dilations:
        for dy, dx in _OFFSETS:
            diff = (_shifted(padded, pad, dy, dx, d, rows, w) - images).abs()
            torch.mean(-diff / scale, dim=1, out=logits[:, p])
            p += 1
    return F.softmax(logits, dim=1)


def pamr(
    images: Tensor,
    masks: Tensor,
    *,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    num_iter: int = 10,
    kernel: Literal["code", "paper"] = "code",
) -> Tensor:
    """Refine masks by iterated affinity-weighted averaging over image-adaptive neighbourhoods.

    Float32/64 masks without autograd: each round is one product with a sparse (N, N) matrix
    holding α (N = B·H·W, 8·|D| entries per row); otherwise (other dtypes, or a gradient
    through PAMR) each round sums the 8·|D| shifted views of the padded masks weighted by α,
    band by band of rows. The official code materialises a (B, C, 8·|D|, H, W) tensor per
    round; the result is the same up to float rounding.

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
    # PAMR is hundreds of small memory-bound ops; on the CPU, intra-op threads cost more in
    # synchronisation than they save (5-10x slower on a loaded 2-core machine, see
    # docs/performance.md), so it runs on one.
    with single_cpu_thread(masks.device.type == "cpu"):
        alpha = pamr_affinity(images.to(masks.dtype), dilations=dilations, kernel=kernel)
        if num_iter <= 0:
            return masks
        needs_grad = torch.is_grad_enabled() and (masks.requires_grad or images.requires_grad)
        if masks.dtype in (torch.float32, torch.float64) and not needs_grad:
            return _propagate_sparse(masks, alpha, dilations, num_iter)
        return _propagate_bands(masks, alpha, dilations, num_iter)


def _propagate_bands(masks: Tensor, alpha: Tensor, dilations: Sequence[int], num_iter: int
                     ) -> Tensor:
    """The averaging rounds as 8·|D| shifted multiply-adds per row band (any dtype, autograd).

    masks (B, C, H, W), alpha (B, P, H, W) → (B, C, H, W).
    """
    alpha = alpha.unsqueeze(2)  # (B, P, 1, H, W): one weight per neighbour, shared by channels
    h, w = masks.shape[-2:]
    pad = max(dilations)
    offsets = [(d, dy, dx) for d in dilations for dy, dx in _OFFSETS]
    bands = _row_bands(h, masks.shape[0] * masks.shape[1] * w * masks.element_size())
    for _ in range(num_iter):
        padded = F.pad(masks, [pad] * 4, mode="replicate")
        parts = []
        for rows in bands:
            weights = alpha[..., rows, :]
            d, dy, dx = offsets[0]
            band = _shifted(padded, pad, dy, dx, d, rows, w) * weights[:, 0]
            for p, (d, dy, dx) in enumerate(offsets[1:], start=1):
                band = band.addcmul_(_shifted(padded, pad, dy, dx, d, rows, w), weights[:, p])
            parts.append(band)
        masks = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
    return masks


def neighbour_index(batch: int, height: int, width: int, dilations: Sequence[int],
                    *, device: torch.device | None = None) -> Tensor:
    """Flat index of each pixel's 8·|D| neighbours, replicate padding as clamping.

    Returns:
        int64 (B·H·W, P): row b·H·W + y·W + x lists the neighbours in `local_neighbours` order.
    """
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    cols = []
    for d in dilations:
        for dy, dx in _OFFSETS:
            ny = (ys + dy * d).clamp(0, height - 1)
            nx = (xs + dx * d).clamp(0, width - 1)
            cols.append((ny[:, None] * width + nx[None, :]).reshape(-1))
    per_image = torch.stack(cols, dim=1)  # (H·W, P)
    offsets = torch.arange(batch, device=device) * (height * width)
    return (per_image[None] + offsets[:, None, None]).reshape(-1, per_image.shape[1])


def _propagate_sparse(masks: Tensor, alpha: Tensor, dilations: Sequence[int], num_iter: int
                      ) -> Tensor:
    """The averaging rounds as products with one sparse (N, N) matrix, N = B·H·W.

    Row i of the CSR matrix holds α_i over i's neighbours, so a round is one sparse-dense
    product on the (N, C) pixel-major masks; a neighbour met at several dilations (clamped at
    the border) appears as several entries, which the product sums as the official code does.
    """
    b, c, h, w = masks.shape
    n, p = b * h * w, alpha.shape[1]
    cols = neighbour_index(b, h, w, dilations, device=masks.device)
    values = alpha.permute(0, 2, 3, 1).reshape(-1)
    crow = torch.arange(0, n * p + 1, p, device=masks.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        step = torch.sparse_csr_tensor(crow, cols.reshape(-1), values, (n, n),
                                       check_invariants=False)
    y = masks.permute(0, 2, 3, 1).reshape(n, c)
    for _ in range(num_iter):
        y = torch.sparse.mm(step, y)
    return y.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()


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
