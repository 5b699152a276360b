"""Test-time merging of softmax masks over scales and flips on a fixed padded grid (1-Stage).

Follows `visinf/1-stage-wseg`: `datasets/pascal_voc_ms.py MultiscaleLoader` (each view rescaled
with PIL bicubic, flipped, zero-padded to a fixed size after normalisation, centred),
`models/stage_net.py` (the network sees the padded view, so the nGWP scores, the focal penalty
and the masks are computed on the padded grid), `infer_val.py` (classes kept where the maximum
over views of sigmoid(score) exceeds the FP cut) and `utils/inference_tools.py MergeMultiScale`
(padding cut away, each view resized to the image, flips undone, views averaged, absent classes
zeroed, background raised to a power).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.transforms import scaled_views

__all__ = ["crop_view", "finalize_probs", "merge_views", "pad_center"]


def pad_center(x: Tensor, size: Sequence[int] | None) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad images to `size`, centred as `MultiscaleLoader._pad` (top = ⌊Δh/2⌋, left = ⌊Δw/2⌋).

    The official loader asserts that every view fits; here a side longer than `size` is left
    unpadded (the padded grid is then max(size, view) along that side).

    Args:
        x: (B, C, h, w), already normalised (the padding is 0 = the mean colour).
        size: (height, width) of the padded grid, or None for no padding.

    Returns:
        padded (B, C, max(H, h), max(W, w)) and the (top, left) offset of the view in it.
    """
    if not size:
        return x, (0, 0)
    if len(size) != 2:
        raise ValueError(f"pad size (1-Stage: method.test_pad_size) must be [height, width], "
                         f"got {list(size)}")
    h, w = x.shape[-2:]
    dh, dw = max(int(size[0]) - h, 0), max(int(size[1]) - w, 0)
    top, left = dh // 2, dw // 2
    if dh == 0 and dw == 0:
        return x, (0, 0)
    return F.pad(x, (left, dw - left, top, dh - top)), (top, left)


def crop_view(masks: Tensor, offset: tuple[int, int], view_size: tuple[int, int],
              size: tuple[int, int]) -> Tensor:
    """Cut a view out of the padded grid and resize it to the image (`MergeMultiScale._cut`).

    Args:
        masks: (B, K, Hp, Wp) at the padded input's resolution.
        offset: (top, left) of the view in the padded grid; view_size: its (h, w).
        size: the image's (H, W).

    Returns:
        (B, K, H, W), bilinear with align_corners False (as the official merge).
    """
    top, left = offset
    cut = masks[..., top:top + view_size[0], left:left + view_size[1]]
    return F.interpolate(cut, size=size, mode="bilinear", align_corners=False)


def merge_views(forward: Callable[[Tensor], dict[str, Any]], image: np.ndarray, *,
                scales: Sequence[float], flip: bool, pad_size: Sequence[int] | None = None,
                device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Multi-scale (+ flip) test of `infer_val.py`, on a padded grid when `pad_size` is given.

    Per scale, the PIL-bicubic rescaled image (and its mirror) is normalised, zero-padded to
    `pad_size` and run through `forward`; the softmax masks are resized to the padded input
    (bilinear, align_corners True, the model's `rescale_as`), the padding is cut away, each view
    goes to (H, W) (align_corners False), flipped views are unflipped and all views averaged.
    Without `pad_size` each view runs at its own size.

    Args:
        forward: normalised images (B, 3, h, w) → dict with `masks` (B, K, h', w') softmax
            probabilities and `cls` (B, C) class scores (a `OneStageNet` in eval mode).
        image: uint8 (H, W, 3).
        pad_size: (height, width) of the padded grid (official 1024 × 1024 for ResNet-38).

    Returns:
        probs (K, H, W) float32, the view average (absent classes not yet removed), and
        scores (C,) = max over views of sigmoid(class score).
    """
    height, width = image.shape[:2]
    total: Tensor | None = None
    scores: Tensor | None = None
    count = 0
    for scale in scales:
        x = scaled_views(image, scale, flip=flip).to(device)
        view_size = (x.shape[-2], x.shape[-1])
        x, offset = pad_center(x, pad_size)
        out = forward(x)
        masks = F.interpolate(out["masks"].float(), size=x.shape[-2:], mode="bilinear",
                              align_corners=True)
        masks = crop_view(masks, offset, view_size, (height, width))
        if flip:
            masks = torch.cat([masks[:1], masks[1:].flip(-1)], dim=0)
        view_sum = masks.sum(0)
        total = view_sum if total is None else total + view_sum
        count += masks.shape[0]
        view_scores = torch.sigmoid(out["cls"].float()).amax(0)
        scores = view_scores if scores is None else torch.maximum(scores, view_scores)
    if total is None or scores is None:
        raise ValueError("scales must name at least one scale")
    return total / count, scores


def finalize_probs(probs: Tensor, present: Tensor, *, bg_power: float) -> Tensor:
    """Zero absent foreground channels and raise the background to `bg_power`.

    Args:
        probs: (C+1, H, W) view-averaged softmax, background first.
        present: (C,) bool, classes kept (image labels, or scores above the FP cut).

    Returns:
        (C+1, H, W) scores in [0, 1] (not renormalised, as in the code).
    """
    keep = torch.cat([present.new_ones(1), present]).to(probs.dtype)
    out = probs * keep[:, None, None]
    out[0] = out[0].pow(bg_power)
    return out
