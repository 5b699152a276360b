"""1-Stage class scores and segmentation targets (arXiv:2005.08104, §3.2-3.3), pure functions.

nGWP, the focal mask penalty, the PAMR pseudo ground truth and the class-balanced segmentation
cross-entropy re-implement `visinf/1-stage-wseg: models/stage_net.py` (`SoftMaxAE.forward`,
`focal_loss`, `pseudo_gtmask`, `balanced_mask_loss_ce`); single_stage.md §2-3.
Channel 0 of every (B, C+1, ...) tensor is the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.labels import IGNORE_INDEX

__all__ = ["balanced_seg_loss", "focal_mask_penalty", "ngwp_scores", "pseudo_gt_masks"]


def ngwp_scores(logits: Tensor, masks: Tensor, *, eps: float = 1.0) -> Tensor:
    """Normalised Global Weighted Pooling: y_c = Σ_ij m_cij·x_cij / (eps + Σ_ij m_cij).

    Args:
        logits: x (B, K, h, w) mask logits.
        masks: m (B, K, h, w) softmax of `logits` over K (any non-negative weights work).
        eps: ε = 1 in the paper and code; it lets a class with a small mask score near 0.

    Returns:
        (B, K) scores. With m → 0 the score → 0; with a uniform m = 1 it is the mean of x
        times N / (eps + N).
    """
    x = logits.flatten(2)
    m = masks.flatten(2)
    return (x * m).sum(-1) / (eps + m.sum(-1))


def focal_mask_penalty(masks: Tensor, *, p: float = 3.0, lam: float = 0.01) -> Tensor:
    """Focal mask penalty y_c = (1 − m̄_c)^p · log(λ + m̄_c), m̄_c the spatial mean of m_c.

    Args:
        masks: (B, K, h, w) in [0, 1] (the low-resolution softmax, not upsampled).
        p: focusing exponent (paper 3; p = 0 is the plain size penalty log(λ + m̄)).
        lam: λ (paper 0.01); bounds the penalty at log λ for an empty mask.

    Returns:
        (B, K), ≤ 0 for λ ≤ 1: log λ at m̄ = 0, exactly 0 at m̄ = 1 (for p > 0).
    """
    mean = masks.flatten(2).mean(-1)
    return (1.0 - mean).pow(p) * torch.log(lam + mean)


def pseudo_gt_masks(
    masks: Tensor,
    *,
    fg_cutoff: float = 0.6,
    bg_cutoff: float = 0.7,
    floor: float = 0.2,
) -> Tensor:
    """Binary pseudo ground truth from refined masks (official `pseudo_gtmask`).

    Per image and class, t_c = max(m_c) · `bg_cutoff` for background (channel 0) and
    · `fg_cutoff` for the rest, raised to at least `floor`; pgt_c = [m_c > t_c]. Pixels claimed
    by more than one class are cleared (all zeros = ignored).

    Args:
        masks: (B, C+1, H, W) scores in [0, 1]; absent classes already zeroed.

    Returns:
        (B, C+1, H, W) in {0, 1}, dtype of `masks`, at most one 1 per pixel.
    """
    peak = masks.flatten(2).amax(-1)
    cutoff = torch.full_like(peak, fg_cutoff)
    cutoff[:, 0] = bg_cutoff
    thresholds = (peak * cutoff).clamp_min(floor)
    pgt = (masks > thresholds[..., None, None]).to(masks.dtype)
    ambiguous = pgt.sum(1, keepdim=True) > 1
    return pgt.masked_fill(ambiguous, 0.0)


def balanced_seg_loss(logits: Tensor, pseudo_gt: Tensor, labels: Tensor) -> Tensor:
    """Class-balanced cross-entropy against the pseudo ground truth (official
    `balanced_mask_loss_ce`), per image.

    Target = argmax of `pseudo_gt`, ignored where it is all zero. Class c's pixels are weighted
    q_c = (M − M_c) / (1 + M), M_c its pseudo-GT pixel count and M = Σ_c M_c. The per-image loss
    is the mean of q·CE over all H·W pixels (ignored pixels count in the mean as 0), times 0
    unless the pseudo GT has exactly (number of image labels + 1) classes, i.e. it found
    background and every labelled class.

    Args:
        logits: (B, C+1, h, w) mask logits (with the constant background logit); bilinearly
            resized (align_corners True) to the pseudo-GT size.
        pseudo_gt: (B, C+1, H, W) in {0, 1}, at most one 1 per pixel.
        labels: (B, C) multi-hot image labels.

    Returns:
        (B,) non-negative losses; the caller averages them (zeroed images included).
    """
    size = pseudo_gt.shape[-2:]
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    covered = pseudo_gt.sum(1) > 0
    target = pseudo_gt.argmax(1).masked_fill(~covered, IGNORE_INDEX)
    per_class = pseudo_gt.flatten(2).sum(-1)  # (B, C+1)
    total = per_class.sum(-1, keepdim=True)
    class_weight = (total - per_class) / (1.0 + total)
    pixel_weight = (pseudo_gt * class_weight[..., None, None]).sum(1)  # 0 where ignored
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    expected = labels.sum(-1).to(ce.dtype) + 1.0
    found = (per_class > 0).sum(-1).to(ce.dtype)
    batch_weight = (expected == found).to(ce.dtype)
    return batch_weight * (pixel_weight * ce).flatten(1).mean(-1)
