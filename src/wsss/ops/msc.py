"""Multi-scale inputs with a pixel-wise max over the logits (DeepLab-v2's MSC), for training and
test (`kazuto1011/deeplab-pytorch: libs/models/msc.py`, `main.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["msc_logits", "msc_max"]


def msc_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               scales: Sequence[float]) -> list[torch.Tensor]:
    """Logits of the images and of bilinearly rescaled copies (`MSC.forward`).

    Each copy is `F.interpolate(images, scale_factor=s, mode="bilinear",
    align_corners=False)` of the normalised input, as deeplab-pytorch rescales (not a PIL
    resize of the uint8 image).

    Args:
        logits_fn: images (B, 3, H, W) → logits (B, K, h, w) at the network's stride.
        images: (B, 3, H, W) normalised.
        scales: the extra scales (deeplab-pytorch: 0.5, 0.75); the unscaled input comes first.

    Returns:
        [logits of the input, logits of each scale], each (B, K, h_s, w_s) at its own size.
    """
    out = [logits_fn(images)]
    for scale in scales:
        scaled = F.interpolate(images, scale_factor=float(scale), mode="bilinear",
                               align_corners=False)
        out.append(logits_fn(scaled))
    return out


def msc_max(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pixel-wise max of logits resized (bilinear, align_corners False) to the first one's size.

    Args:
        logits: list of (B, K, h_i, w_i); the first sets the output size.

    Returns:
        (B, K, h_0, w_0).
    """
    if not logits:
        raise ValueError("msc_max needs at least one logit map")
    size = logits[0].shape[-2:]
    resized = [logits[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                             for x in logits[1:]]
    # max (not amax): a tie sends the whole gradient to one map, as torch.max in deeplab-pytorch.
    return torch.stack(resized).max(dim=0).values
