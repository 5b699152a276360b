"""AuxSegNet's cross-task affinity math (Xu et al., ICCV 2021, arXiv:2107.11787): non-local
task affinities, their fusion, propagation of predictions, the pseudo-label update rules and the
training losses.

Pure tensor functions (the saliency CRF works on numpy arrays, as every CRF in `wsss.ops.crf`).
Follows `xulianuwa/AuxSegNet`: `network/non_local.py` (`NLBlockND`, embedded Gaussian),
`network/AuxSegNet.py` (`Net.forward`), `step/gen_pgt.py`, `step/train_AuxAff.py` and
`tool/imutils.py` (`fusion_cam`, `crf_for_sal`). Affinities are (B, N, N) with N = h·w pixels in
row-major order; row i holds the weights pixel i gives to every pixel j (the task affinities'
rows sum to one) and a propagated map is out[i] = Σ_j A[i, j] · x[j].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.labels import IGNORE_INDEX

__all__ = [
    "auxsegnet_losses",
    "embedded_gaussian_affinity",
    "fuse_affinities",
    "fuse_cam_saliency",
    "propagate",
    "saliency_crf",
    "saliency_crf_unary",
]


def embedded_gaussian_affinity(theta: Tensor, phi: Tensor) -> Tensor:
    """Non-local embedded-Gaussian affinity (`NLBlockND.forward`, mode "embedded").

    A = softmax_row(θᵀ φ): A[b, i, j] = exp(θ_i · φ_j) / Σ_k exp(θ_i · φ_k), no scaling by √D.

    Args:
        theta, phi: (B, D, h, w) embeddings of the same feature map (1×1 convolutions θ and φ).

    Returns:
        (B, N, N) with N = h·w; every row is a probability vector (non-negative, sums to 1).
    """
    if theta.shape != phi.shape or theta.ndim != 4:
        raise ValueError(f"theta and phi must be equal (B, D, h, w), got {tuple(theta.shape)} "
                         f"and {tuple(phi.shape)}")
    t = theta.flatten(2).transpose(1, 2)  # (B, N, D)
    p = phi.flatten(2)  # (B, D, N)
    return torch.softmax(torch.bmm(t, p), dim=-1)


def propagate(affinity: Tensor, x: Tensor) -> Tensor:
    """Aggregate a map over pixels with an affinity: out[b, :, i] = Σ_j A[b, i, j] · x[b, :, j].

    Used for the non-local feature refinement (A_t · g_t(F_t)), the refined predictions
    (A_ct · Y) and the CAM propagation of the label update (A_ct · CAM).

    Args:
        affinity: (B, N, N), non-negative.
        x: (B, K, h, w) with h·w = N.

    Returns:
        (B, K, h, w); with rows summing to one, a map that is constant over pixels is returned
        unchanged and values stay within the input's range.
    """
    b, k, h, w = x.shape
    if affinity.shape != (b, h * w, h * w):
        raise ValueError(f"affinity must be (B, N, N) = {(b, h * w, h * w)} for x of shape "
                         f"{tuple(x.shape)}, got {tuple(affinity.shape)}")
    flat = x.flatten(2).transpose(1, 2)  # (B, N, K)
    return torch.bmm(affinity.to(flat.dtype), flat).transpose(1, 2).reshape(b, k, h, w)


def fuse_affinities(affinities: Tensor, weight_logits: Tensor, *, normalize: bool = False
                    ) -> Tensor:
    """Cross-task affinity A_ct = Σ_t softmax_t(w)_t ⊙ A_t (element-wise weights).

    The official network computes `weight_logits` with a 3×3 conv → ReLU → 1×1 conv on the stack
    [A_seg, A_sal] treated as a (B, 2, N, N) image and uses A_ct as is. Because the weights vary
    along a row, a row of A_ct sums to Σ_j Σ_t w_t[i, j] A_t[i, j] ∈ (0, T], not exactly to one
    (it does when the weights are constant along the row). `normalize=True` divides each row
    by its sum, making A_ct a transition matrix (the paper-level description).

    Args:
        affinities: (B, T, N, N) task affinities (T = 2: segmentation, saliency), rows sum to 1.
        weight_logits: (B, T, N, N) unnormalised fusion weights.
        normalize: renormalise the rows to sum to one.

    Returns:
        (B, N, N) fused affinity, non-negative.
    """
    if affinities.shape != weight_logits.shape or affinities.ndim != 4:
        raise ValueError(f"affinities and weight_logits must be equal (B, T, N, N), got "
                         f"{tuple(affinities.shape)} and {tuple(weight_logits.shape)}")
    fused = (torch.softmax(weight_logits, dim=1) * affinities).sum(dim=1)
    if normalize:
        # Rows are strictly positive (softmax affinities times positive weights).
        fused = fused / fused.sum(dim=-1, keepdim=True)
    return fused


def fuse_cam_saliency(
    cams: Tensor,
    saliency: Tensor,
    labels: Tensor,
    *,
    cam_threshold: float = 0.2,
    saliency_threshold: float = 0.06,
) -> Tensor:
    """Segmentation pseudo-labels from CAMs and saliency (`tool/imutils.py fusion_cam`).

    Absent classes are zeroed; a pixel is object by CAM when max_c cam > `cam_threshold` and
    object by saliency when saliency > `saliency_threshold`. Both: the argmax class (1..C);
    neither: background 0; exactly one: 255 (ignored in training).

    Args:
        cams: (B, C, H, W) foreground CAMs in [0, 1] (C = foreground classes).
        saliency: (B, H, W) or (B, 1, H, W) saliency in [0, 1].
        labels: (B, C) multi-hot image labels.

    Returns:
        int64 (B, H, W) in {0, 1..C, 255}.
    """
    if saliency.ndim == 4:
        saliency = saliency[:, 0]
    if cams.ndim != 4 or saliency.shape != (cams.shape[0],) + tuple(cams.shape[2:]):
        raise ValueError(f"cams (B, C, H, W) and saliency (B, H, W) must agree, got "
                         f"{tuple(cams.shape)} and {tuple(saliency.shape)}")
    cams = cams * labels.to(cams.dtype)[:, :, None, None]
    peak, arg = cams.max(dim=1)
    obj_cam = peak > cam_threshold
    obj_sal = saliency > saliency_threshold
    masks = torch.where(obj_cam & obj_sal, arg + 1, torch.zeros_like(arg))
    return masks.masked_fill(obj_cam ^ obj_sal, IGNORE_INDEX)


def saliency_crf_unary(saliency: np.ndarray, *, tau: float = 1.05, eps: float = 1e-8
                       ) -> np.ndarray:
    """Unary energies of the saliency CRF (`crf_for_sal`).

    E_bg = −log(1 − s + ε) / (τ·σ(1 − s)), E_fg = −log(s + ε) / (τ·σ(s)), σ = logistic.

    Args:
        saliency: (H, W) float in [0, 1].

    Returns:
        float32 (2, H, W): background, foreground energies (non-negative).
    """
    s = np.clip(np.asarray(saliency, dtype=np.float64), 0.0, 1.0)

    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-v))

    e_bg = -np.log(1.0 - s + eps) / (tau * sigmoid(1.0 - s))
    e_fg = -np.log(s + eps) / (tau * sigmoid(s))
    return np.stack([e_bg, e_fg]).astype(np.float32)


def saliency_crf(
    image: np.ndarray,
    saliency: np.ndarray,
    *,
    tau: float = 1.05,
    num_iter: int = 1,
    gaussian_sxy: float = 3,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 60,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 5,
) -> np.ndarray:
    """CRF-smoothed saliency (`crf_for_sal`: 2 labels, the unary of `saliency_crf_unary`,
    Gaussian sxy 3 compat 3, bilateral sxy 60 srgb 5 compat 5, one mean-field iteration).

    Args:
        image: uint8 (H, W, 3) RGB.
        saliency: (H, W) float in [0, 1].

    Returns:
        float32 (H, W) in [0, 1], the posterior of the foreground label.
    """
    from wsss.ops.crf import dense_crf_energies

    if saliency.shape != image.shape[:2]:
        raise ValueError(f"saliency must be (H, W) = {image.shape[:2]}, got {saliency.shape}")
    q = dense_crf_energies(image, saliency_crf_unary(saliency, tau=tau), num_iter=num_iter,
                           gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat,
                           bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb,
                           bilateral_compat=bilateral_compat)
    return q[1]


def auxsegnet_losses(
    outputs: dict[str, Tensor],
    *,
    labels: Tensor,
    masks: Tensor,
    saliency: Tensor,
    saliency_label_threshold: float = 0.5,
) -> dict[str, Tensor]:
    """The AuxSegNet loss terms (`step/train_AuxAff.py`), unweighted.

    Every map is bilinearly upsampled (align_corners False) to the label size first.
    cls = multilabel soft margin; sal = BCE-with-logits against the saliency binarised at
    `saliency_label_threshold`, one term per saliency output (initial, refined); seg = cross
    entropy with 255 ignored (mean over labelled pixels of the batch), one term per output.
    An output missing from `outputs` contributes no term.

    Args:
        outputs: any of `cls` (B, C) logits, `sal_init`, `sal_refined` (B, 1, h, w) logits,
            `seg_init`, `seg_refined` (B, C+1, h, w) logits.
        labels: (B, C) multi-hot.
        masks: int64 (B, H, W) segmentation pseudo-labels (255 = ignore).
        saliency: (B, H, W) saliency labels in [0, 1].

    Returns:
        dict of scalar terms among `cls`, `sal_init`, `sal_refined`, `seg_init`, `seg_refined`.
    """
    size = tuple(masks.shape[-2:])
    terms: dict[str, Tensor] = {}
    if "cls" in outputs:
        logits = outputs["cls"]
        terms["cls"] = F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))
    target = (saliency > saliency_label_threshold).to(torch.float32)[:, None]
    for key in ("sal_init", "sal_refined"):
        if key in outputs:
            logit = F.interpolate(outputs[key].float(), size=size, mode="bilinear",
                                  align_corners=False)
            terms[key] = F.binary_cross_entropy_with_logits(logit, target)
    for key in ("seg_init", "seg_refined"):
        if key in outputs:
            logit = F.interpolate(outputs[key].float(), size=size, mode="bilinear",
                                  align_corners=False)
            if bool((masks != IGNORE_INDEX).any()):
                terms[key] = F.cross_entropy(logit, masks, ignore_index=IGNORE_INDEX)
            else:  # an all-ignored batch: no signal, but keep the graph (DDP)
                terms[key] = logit.sum() * 0.0
    return terms
