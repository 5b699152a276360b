"""Importance-sampling aggregation and the feature similarity loss (arXiv:2203.12459), pure math.

Re-implements `arvijj/icam: tool/probutils.py` (`probs_to_logits`, `sample_probs`,
`feature_similarity_loss`) and the SEAM loss helpers of `YudeWang/SEAM: train_SEAM.py`
(`adaptive_min_pooling_loss`, `max_onehot`) and `tool/visualization.py` (`max_norm`);
importance_sampling.md §3. Channel 0 of every (B, C+1, ...) tensor is the background.

The feature similarity loss sums over all pixel pairs as the official code does, in row chunks
of the (hw)² pair matrix with ‖a_i − a_j‖² expanded into norms and one matrix product, so no
(hw)² × K tensor is ever built; a `radius` restricts it to local neighbourhoods (shifted views).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "adaptive_min_pooling_loss",
    "feature_similarity_loss",
    "importance_sample",
    "max_norm",
    "max_onehot",
    "probs_to_logits",
    "sample_indices",
]


def probs_to_logits(probs: Tensor, *, eps: float = 1e-3) -> Tensor:
    """Logits of probabilities with the official asymmetric epsilon.

    log(p(1 − eps) + eps) − log(1 − p(1 − eps)): p = 1 → ≈ +6.9, p = 0 → ≈ −6.9 for eps = 1e-3
    (the sigmoid of the result is not exactly p; it is what `probutils.probs_to_logits` does).

    Args:
        probs: any shape, values in [0, 1].

    Returns:
        same shape, finite.
    """
    scaled = probs * (1.0 - eps)
    return torch.log(scaled + eps) - torch.log(1.0 - scaled)


def sample_indices(weights: Tensor, num_samples: int, *,
                   generator: torch.Generator | None = None) -> Tensor:
    """Pixel indices drawn with replacement from the pmf ∝ `weights` of each (image, channel).

    A map whose weights are all zero (a softmax channel that underflowed everywhere) is drawn
    uniformly; `torch.multinomial`, and so the official code, fails on it.

    Args:
        weights: (B, K, h, w) non-negative.
        num_samples: S draws per map.

    Returns:
        (B, K, S) int64 flat indices into h·w.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    b, k = weights.shape[:2]
    flat = weights.detach().reshape(b * k, -1).float()
    empty = flat.sum(-1, keepdim=True) <= 0
    flat = torch.where(empty, torch.ones_like(flat), flat)
    idx = torch.multinomial(flat, num_samples, replacement=True, generator=generator)
    return idx.reshape(b, k, num_samples)


def importance_sample(values: Tensor, weights: Tensor, num_samples: int, *,
                      generator: torch.Generator | None = None) -> Tensor:
    """Values of `values` at pixels drawn per (image, channel) from the pmf ∝ `weights`.

    ICAM samples the softmax probabilities with themselves as weights; the naive variant
    (importance_sampling.md §9 style) samples raw CAM logits with weights ReLU(logits) + ε.
    The gradient flows through the gathered values only (the draw itself is not
    differentiable).

    Args:
        values: (B, K, h, w).
        weights: (B, K, h, w) non-negative (detached internally).
        num_samples: S.

    Returns:
        (B, K, S) gathered values.
    """
    idx = sample_indices(weights, num_samples, generator=generator)
    return values.flatten(2).gather(2, idx)


def max_norm(cams: Tensor, *, eps: float = 1e-5) -> Tensor:
    """SEAM's torch `max_norm`: per (b, c) map, p ← ReLU(p), p ← ReLU(p − min − eps) /
    (max − min + eps).

    Args:
        cams: (B, C, h, w).

    Returns:
        (B, C, h, w) in [0, 1).
    """
    p = F.relu(cams)
    low = p.flatten(2).amin(-1)[..., None, None]
    high = p.flatten(2).amax(-1)[..., None, None]
    return F.relu(p - low - eps) / (high - low + eps)


def max_onehot(cams: Tensor) -> Tensor:
    """SEAM's `max_onehot` without the in-place write: foreground entries below the per-pixel
    foreground maximum are set to 0; the background channel is kept.

    Args:
        cams: (B, C+1, h, w), background first.

    Returns:
        (B, C+1, h, w), a new tensor.
    """
    fg = cams[:, 1:]
    top = fg.amax(1, keepdim=True)
    return torch.cat([cams[:, :1], torch.where(fg < top, torch.zeros_like(fg), fg)], dim=1)


def adaptive_min_pooling_loss(cams: Tensor) -> Tensor:
    """SEAM's `adaptive_min_pooling_loss`: mean of ReLU over the ⌊hw/4⌋ smallest values of the
    per-pixel maximum over channels (suppresses activation on the least active quarter).

    Args:
        cams: (B, C, h, w) foreground maps (label-masked by the caller).

    Returns:
        scalar ≥ 0: Σ ReLU(smallest k) / (k·B).
    """
    b = cams.shape[0]
    peak = cams.amax(1).reshape(b, -1)
    k = max(peak.shape[1] // 4, 1)
    smallest = torch.topk(peak, k, dim=-1, largest=False).values
    return F.relu(smallest).sum() / (k * b)


def _as_tensor(value: float | Tensor, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else like.new_tensor(float(value))


def _fsl_terms(delta: Tensor, mu: Tensor) -> Tensor:
    """f = tanh(μ + logit-like(δ)) of paper eq. 11 / `probutils` (ε 1e-5 on both sides)."""
    return torch.tanh(mu + torch.log((delta + 1e-5) / (1.0 - delta + 1e-5)))


def _gaussian(d2: Tensor, sigma: Tensor) -> Tensor:
    return torch.exp(-d2 / (2.0 * sigma ** 2)) / (2.0 * math.pi * sigma ** 2)


def _fsl_all_pairs(x: Tensor, probs: Tensor, mu: Tensor, sigma: Tensor,
                   chunk_elements: int) -> Tensor:
    """Σ over every ordered pair i ≠ j of w_ij·f_ij·‖a_i − a_j‖², summed over the batch.

    With W = w∘f (symmetric, zero diagonal), Σ_ij W_ij‖a_i − a_j‖² = Σ_i ‖a_i‖²(Σ_j W_ij +
    Σ_j W_ji) − 2 Σ_i a_i·(W a)_i; W is built a block of rows at a time (≤ `chunk_elements`
    entries over the batch), so memory is O(B·m·hw) plus the blocks autograd keeps for the
    matrix product, (hw)² per image — what the official dense `cdist` matrices need several times.
    """
    b, _, h, w = probs.shape
    n = h * w
    ys, xs = torch.meshgrid(torch.arange(h, device=probs.device),
                            torch.arange(w, device=probs.device), indexing="ij")
    coords = torch.stack([ys.reshape(-1), xs.reshape(-1)], 1).to(probs.dtype)  # (n, 2)
    xf = x.reshape(b, x.shape[1], n)  # (B, 3, n)
    a = probs.reshape(b, probs.shape[1], n).transpose(1, 2)  # (B, n, K)
    sq = a.pow(2).sum(-1)  # (B, n)
    cols = torch.arange(n, device=probs.device)
    rows_per_chunk = max(1, chunk_elements // max(b * n, 1))
    total = probs.new_zeros(())
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        d2 = (coords[start:stop, None, :] - coords[None, :, :]).pow(2).sum(-1)  # (m, n)
        weight = _gaussian(d2, sigma)
        weight = weight * (cols[start:stop, None] != cols[None, :])  # i = j adds g_ii = 0
        delta = ((xf[:, :, start:stop, None] - xf[:, :, None, :]).abs().sum(1) / 3.0)
        wf = weight * _fsl_terms(delta.clamp(0.0, 1.0), mu)  # (B, m, n)
        total = total + (wf.sum(2) * sq[:, start:stop]).sum() + (wf.sum(1) * sq).sum()
        total = total - 2.0 * (a[:, start:stop] * torch.bmm(wf, a)).sum()
    return total


def _fsl_window(x: Tensor, probs: Tensor, mu: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """As `_fsl_all_pairs` over the pairs with |Δrow|, |Δcol| ≤ radius (shifted views)."""
    _, _, h, w = probs.shape
    total = probs.new_zeros(())
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx <= 0:  # the other half of each symmetric pair, and i = j
                continue
            if dy >= h or abs(dx) >= w:
                continue
            # rows: i in [0, h − dy), j = i + dy; cols: i in [a0, a1), j = i + dx
            a0, a1 = max(0, -dx), w - max(0, dx)
            xi, xj = x[:, :, : h - dy, a0:a1], x[:, :, dy:, a0 + dx: a1 + dx]
            pi, pj = probs[:, :, : h - dy, a0:a1], probs[:, :, dy:, a0 + dx: a1 + dx]
            delta = ((xi - xj).abs().sum(1) / 3.0).clamp(0.0, 1.0)
            g = (pi - pj).pow(2).sum(1)
            weight = _gaussian(probs.new_tensor(float(dy * dy + dx * dx)), sigma)
            total = total + 2.0 * weight * (g * _fsl_terms(delta, mu)).sum()
    return total


def feature_similarity_loss(
    images: Tensor,
    probs: Tensor,
    *,
    mu: float | Tensor = 2.5,
    sigma: float | Tensor = 5.0,
    radius: int | None = None,
    half_gate: bool = False,
    normalization: str = "code",
    chunk_elements: int = 1 << 24,
) -> Tensor:
    """Feature similarity loss (paper eq. 9-12, `probutils.feature_similarity_loss`).

    For pixels i ≠ j of one image: δ_ij = clamp(‖x_i − x_j‖₁ / 3, 0, 1),
    f_ij = tanh(μ + log((δ + 1e-5) / (1 − δ + 1e-5))), g_ij = ‖a_i − a_j‖² (×½ with
    `half_gate`, as the paper), w_ij = exp(−d_ij² / (2σ²)) / (2πσ²) with d the grid distance;
    L = −Σ_ij w_ij·g_ij·f_ij / N over all ordered pairs, as the official code. Similar pixels
    (f < 0) whose predictions differ add a positive penalty; dissimilar ones (f > 0) are pushed
    apart. With `radius`, pairs farther than it in rows or columns are left out (each unordered
    pair visited once, counted twice); at σ = 5 on 56×56 maps, radius 15 changes the loss by
    ≈ 1 %.

    Args:
        images: x (B, 3, h, w) RGB in [0, 1].
        probs: a (B, K, h, w) predictions (softmax probabilities for ICAM).
        mu: μ, a float or a scalar tensor (learned, with gradient).
        sigma: σ > 0 in pixels of the map, a float or a scalar tensor (learned).
        radius: None = every pair (code); else the neighbourhood half-width, capped at
            max(h, w) − 1 (equal to every pair there).
        half_gate: g = ½‖a_i − a_j‖² (paper) instead of ‖a_i − a_j‖² (code).
        normalization: "code" N = B·h·w; "paper" N = B·(h·w)² (eq. 9 per image, batch mean).
        chunk_elements: all-pairs block size (entries of the pair matrix over the batch).

    Returns:
        scalar tensor.
    """
    if images.shape[0] != probs.shape[0] or images.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and probs {tuple(probs.shape)} must "
                         "share batch and spatial size")
    if normalization not in ("code", "paper"):
        raise ValueError(f"normalization must be 'code' or 'paper', got {normalization!r}")
    b, _, h, w = probs.shape
    mu_t = _as_tensor(mu, probs)
    sigma_t = _as_tensor(sigma, probs)
    x = images.to(probs.dtype)
    if radius is None:
        total = _fsl_all_pairs(x, probs, mu_t, sigma_t, chunk_elements)
    else:
        total = _fsl_window(x, probs, mu_t, sigma_t, min(int(radius), max(h, w) - 1))
    if half_gate:
        total = total * 0.5
    norm = b * h * w if normalization == "code" else b * (h * w) ** 2
    return -total / norm
