"""Pure loss functions shared by methods: AMN's per-pixel classification loss, IRN's losses.

- `pcl_loss`: AMN (arXiv:2203.16045) class-balanced cross-entropy with label smoothing,
  `gaviotas/AMN: step/train_amn.py` (`balanced_cross_entropy` and the inline soft targets).
- `irn_affinity_loss`, `irn_displacement_loss`: IRN (arXiv:1904.05044),
  `jiwoon-ahn/irn: net/resnet50_irn.py AffinityDisplacementLoss` and `step/train_irn.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.labels import BACKGROUND, IGNORE_INDEX

__all__ = [
    "irn_affinity_loss",
    "irn_displacement_loss",
    "pcl_loss",
    "smoothed_targets",
]

# IRN's constant inside the logs and the divisions: keeps −log(0) and empty counts finite.
_IRN_EPS = 1e-5


def smoothed_targets(seeds: Tensor, num_outputs: int, epsilon: float = 0.4) -> Tensor:
    """Label-smoothed one-hot targets (AMN code: ε/(C−1) off target, 1 − ε on target).

    Ignored pixels (255) are treated as background here, as in the official code; `pcl_loss`
    excludes them from the loss anyway.

    Args:
        seeds: (B, h, w) int64 labels in 0..C-1 or 255.
        num_outputs: C, the number of output channels (foreground classes + 1).
        epsilon: smoothing ε (AMN: 0.4, so 0.02 off target and 0.6 on target for C = 21).

    Returns:
        float32 (B, C, h, w); every pixel's distribution sums to one.
    """
    if num_outputs < 2:
        raise ValueError(f"num_outputs must be >= 2, got {num_outputs}")
    labels = seeds.long().masked_fill(seeds == IGNORE_INDEX, BACKGROUND)
    one_hot = F.one_hot(labels, num_outputs).permute(0, 3, 1, 2).bool()
    off = torch.tensor(epsilon / (num_outputs - 1), device=seeds.device)
    return torch.where(one_hot, torch.tensor(1.0 - epsilon, device=seeds.device), off)


def pcl_loss(logits: Tensor, seeds: Tensor, epsilon: float = 0.4) -> Tensor:
    """AMN's per-pixel classification loss: (L_bg + L_fg) / 2 with smoothed cross-entropy.

    ℓ_u = −Σ_c S_uc log softmax(logits)_uc; L_bg averages ℓ over the batch's background seed
    pixels, L_fg over its foreground seed pixels (counts over the whole batch); 255 is excluded.
    When one of the two sets is empty the official code divides by zero (NaN); here the loss is
    the mean of the terms that exist, and 0 (still attached to the graph) when both are empty.

    Args:
        logits: (B, C, h, w) scores, channel 0 = background.
        seeds: (B, h, w) int64 labels in 0..C-1 or 255, at the logits' size.
        epsilon: label smoothing ε.

    Returns:
        scalar tensor.
    """
    if logits.shape[0] != seeds.shape[0] or logits.shape[-2:] != seeds.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and seeds {tuple(seeds.shape)} differ")
    targets = smoothed_targets(seeds, logits.shape[1], epsilon).to(logits.dtype)
    per_pixel = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)  # (B, h, w)
    terms = []
    for region in (seeds == BACKGROUND, (seeds != BACKGROUND) & (seeds != IGNORE_INDEX)):
        count = region.sum()
        if count > 0:
            terms.append((per_pixel * region).sum() / count)
    if not terms:
        return logits.sum() * 0.0
    return torch.stack(terms).mean()


def irn_affinity_loss(affinity: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor
                      ) -> tuple[Tensor, Tensor]:
    """IRN's class-boundary losses on pair affinities.

    pos = −log(a + ε), neg = −log(1 + ε − a) with ε = 1e-5;
    L_pos = ½ Σ bg_pos·pos / (Σ bg_pos + ε) + ½ Σ fg_pos·pos / (Σ fg_pos + ε);
    L_neg = Σ neg·neg_loss / (Σ neg + ε). Counts are over the whole batch.

    Args:
        affinity: (B, D, S) affinities in [0, 1] (`affinity_from_boundary`).
        bg_pos, fg_pos, neg: (B, D, S) float pair labels (`affinity_labels`).

    Returns:
        (L_pos, L_neg) scalars.
    """
    pos_loss = -torch.log(affinity + _IRN_EPS)
    neg_loss = -torch.log(1.0 + _IRN_EPS - affinity)
    bg = (bg_pos * pos_loss).sum() / (bg_pos.sum() + _IRN_EPS)
    fg = (fg_pos * pos_loss).sum() / (fg_pos.sum() + _IRN_EPS)
    negative = (neg * neg_loss).sum() / (neg.sum() + _IRN_EPS)
    return bg / 2 + fg / 2, negative


def irn_displacement_loss(pair_disp: Tensor, directions: Tensor, bg_pos: Tensor, fg_pos: Tensor
                          ) -> tuple[Tensor, Tensor]:
    """IRN's displacement losses: same-instance pairs differ by their offset, bg pairs by 0.

    L_fg = Σ |δ − d| · fg_pos / (2 Σ fg_pos + ε); L_bg = Σ |δ| · bg_pos / (2 Σ bg_pos + ε),
    summed over both channels (the 2 averages them).

    Args:
        pair_disp: (B, 2, D, S) displacement differences D(src) − D(dst) (`pair_displacement`).
        directions: int (D, 2) offsets (dy, dx) of the pairs.
        bg_pos, fg_pos: (B, D, S) float pair labels.

    Returns:
        (L_fg, L_bg) scalars.
    """
    offsets = directions.t().to(pair_disp)[None, :, :, None]  # (1, 2, D, 1)
    fg = (torch.abs(pair_disp - offsets) * fg_pos.unsqueeze(1)).sum() / (
        2 * fg_pos.sum() + _IRN_EPS)
    bg = (torch.abs(pair_disp) * bg_pos.unsqueeze(1)).sum() / (2 * bg_pos.sum() + _IRN_EPS)
    return fg, bg
