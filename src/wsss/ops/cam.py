"""CAM post-processing: strided sizes, normalisation, multi-scale merging, masks and seeds.

Conventions follow `docs/architecture.md`: `cams` are (K, H, W) non-negative maps for the K
classes listed in `keys` (class indices, 1..C for foreground, 0 for an explicit background
channel); masks are int class indices with 0 = background and 255 = ignore/unsure.
The seed rule re-implements `jiwoon-ahn/irn: step/cam_to_ir_label.py`; the strided sizes and the
max normalisation follow `jiwoon-ahn/irn: misc/imutils.py` and `step/make_cam.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.labels import BACKGROUND, IGNORE_INDEX

__all__ = [
    "cams_to_mask",
    "cams_to_probs",
    "merge_multiscale",
    "normalize_cams",
    "seeds_from_cams",
    "strided_size",
    "strided_up_size",
]

ArrayLike = Tensor | np.ndarray


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Size of a feature map at `stride` for an input of `size` (ceil division).

    Args:
        size: (H, W) of the input, positive ints.
        stride: output stride, positive int.

    Returns:
        ((H - 1) // stride + 1, (W - 1) // stride + 1), e.g. (375, 500) at stride 4 → (94, 125).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    h, w = size
    return (h - 1) // stride + 1, (w - 1) // stride + 1


def strided_up_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """`strided_size(size, stride)` times `stride`: the smallest multiple of `stride` ≥ size.

    IRN upsamples its high-resolution CAMs to this size and then crops to (H, W), e.g.
    (375, 500) at stride 16 → (384, 512).
    """
    h, w = strided_size(size, stride)
    return h * stride, w * stride


def normalize_cams(
    cams: ArrayLike,
    *,
    mode: Literal["max", "minmax"] = "max",
    eps: float = 1e-5,
) -> ArrayLike:
    """Scale every map to [0, 1] using its own spatial statistics.

    Args:
        cams: (K, H, W) or (B, K, H, W) float tensor (or numpy array); any range.
        mode: "max" applies ReLU and divides each map by its spatial max + `eps` (IRN
            `make_cam`; an all-non-positive map becomes 0). "minmax" computes
            (x - min) / (max - min + eps) per map (AMN, SEAM; no ReLU).
        eps: keeps the division finite for flat maps; 1e-5 as in IRN.

    Returns:
        Same shape, type, device and dtype as `cams`, values in [0, 1].
    """
    if isinstance(cams, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(cams))
        return normalize_cams(x, mode=mode, eps=eps).numpy()
    if cams.ndim not in (3, 4):
        raise ValueError(f"cams must be (K, H, W) or (B, K, H, W), got shape {tuple(cams.shape)}")
    if mode == "max":
        x = F.relu(cams)
        peak = x.amax(dim=(-2, -1), keepdim=True)
        return x / (peak + eps)
    if mode == "minmax":
        low = cams.amin(dim=(-2, -1), keepdim=True)
        high = cams.amax(dim=(-2, -1), keepdim=True)
        return (cams - low) / (high - low + eps)
    raise ValueError(f"mode must be 'max' or 'minmax', got {mode!r}")


def merge_multiscale(
    maps: Sequence[Tensor],
    size: tuple[int, int],
    *,
    reduce: Literal["sum", "mean"] = "sum",
    align_corners: bool = False,
) -> Tensor:
    """Bilinearly resize per-scale maps to one size and reduce them.

    IRN sums the flip-summed maps of all scales (`reduce="sum"`), at the stride-4 size for `cam`
    and at `strided_up_size((H, W), 16)` for `high_res`, which the caller then crops to
    `[..., :H, :W]`. AMN/ICAM average (`reduce="mean"`).

    Args:
        maps: non-empty list of (K, h_i, w_i) (or (B, K, h_i, w_i)) float tensors on one device;
            K (and B) equal across scales.
        size: target (H, W).
        reduce: "sum" or "mean" over scales.
        align_corners: passed to `F.interpolate`; False in all the reference implementations.

    Returns:
        (K, H, W) (or (B, K, H, W)) tensor, device and dtype of `maps[0]`.
    """
    if len(maps) == 0:
        raise ValueError("merge_multiscale needs at least one map")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    ndim = maps[0].ndim
    lead = tuple(maps[0].shape[:-2])
    if ndim not in (3, 4):
        raise ValueError(f"maps must be (K, h, w) or (B, K, h, w), got {tuple(maps[0].shape)}")
    size = (int(size[0]), int(size[1]))
    total: Tensor | None = None
    for m in maps:
        if m.ndim != ndim or tuple(m.shape[:-2]) != lead:
            raise ValueError(f"all maps must share leading dims {lead}, got {tuple(m.shape)}")
        x = m if ndim == 4 else m.unsqueeze(0)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
        total = x if total is None else total + x
    assert total is not None
    if reduce == "mean":
        total = total / len(maps)
    return total if ndim == 4 else total.squeeze(0)


def _keys_list(keys: Any) -> list[int]:
    if isinstance(keys, Tensor):
        keys = keys.detach().cpu().numpy()
    arr = np.asarray(keys).reshape(-1)
    integral = np.issubdtype(arr.dtype, np.integer) or np.all(arr == np.round(arr))
    if arr.size and not integral:
        raise ValueError(f"keys must be integer class indices, got {arr}")
    return [int(k) for k in arr]


def _check_cams(cams: ArrayLike, keys: list[int]) -> None:
    if cams.ndim != 3:
        raise ValueError(f"cams must be (K, H, W), got shape {tuple(cams.shape)}")
    if cams.shape[0] != len(keys):
        raise ValueError(f"cams has {cams.shape[0]} channels but {len(keys)} keys were given")


def cams_to_mask(cams: ArrayLike, keys: Any, *, bg_threshold: float) -> ArrayLike:
    """Label map from CAMs and a constant background score (IRN/AMN/PSA CAM evaluation).

    Equivalent to argmax over [bg_threshold plane; cams] mapped through [0] + keys: a pixel gets
    keys[k] for its highest map k when that map is strictly above `bg_threshold`, else 0
    (ties go to background, and between classes to the earlier channel).

    Args:
        cams: (K, H, W) float tensor or numpy array, usually in [0, 1]; K may be 0.
        keys: (K,) int class indices (1..C; 0 marks an explicit background channel).
        bg_threshold: constant background score τ (IRN eval 0.15, AMN 0.25, PSA 0.2).

    Returns:
        (H, W) int64: a tensor on the device of `cams` if it is a tensor, else a numpy array.
    """
    keys_l = _keys_list(keys)
    _check_cams(cams, keys_l)
    is_np = isinstance(cams, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(cams)) if is_np else cams
    h, w = x.shape[-2:]
    if len(keys_l) == 0:
        out = torch.zeros((h, w), dtype=torch.int64, device=x.device)
    else:
        peak, idx = x.max(dim=0)
        lut = torch.tensor(keys_l, dtype=torch.int64, device=x.device)
        out = torch.where(peak > bg_threshold, lut[idx], torch.zeros_like(idx))
    return out.numpy() if is_np else out


def cams_to_probs(
    cams: ArrayLike,
    keys: Any,
    num_classes: int,
    *,
    bg_threshold: float | None = None,
    bg_power: float | None = None,
) -> ArrayLike:
    """Dense (C+1)-channel score stack with a background channel, e.g. as CRF input.

    Channel keys[k] holds cams[k]; classes not in `keys` get 0. Background (channel 0) is either
    the constant plane `bg_threshold`, or PSA/SEAM/ICAM's (1 - max_k cams_k) ** bg_power (max over
    the foreground maps; 1 where K = 0). When `keys` already contain 0 (an explicit background
    map), that map is used and neither option may be given. Scores are not renormalised
    (evaluation.md §4: the CRF clips them and takes −log).

    Args:
        cams: (K, H, W) float tensor or numpy array, in [0, 1] for `bg_power`.
        keys: (K,) distinct int class indices in 0..num_classes.
        num_classes: C, the number of foreground classes.
        bg_threshold: constant background score.
        bg_power: exponent α of the PSA background.

    Returns:
        (C+1, H, W) same type, device and dtype as `cams`.
    """
    keys_l = _keys_list(keys)
    _check_cams(cams, keys_l)
    if len(set(keys_l)) != len(keys_l):
        raise ValueError(f"keys must be distinct, got {keys_l}")
    if any(k < 0 or k > num_classes for k in keys_l):
        raise ValueError(f"keys must lie in 0..{num_classes}, got {keys_l}")
    has_bg = BACKGROUND in keys_l
    given = (bg_threshold is not None) + (bg_power is not None)
    if has_bg and given:
        raise ValueError("keys contain a background channel; do not pass bg_threshold/bg_power")
    if not has_bg and given != 1:
        raise ValueError("pass exactly one of bg_threshold or bg_power")

    is_np = isinstance(cams, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(cams)) if is_np else cams
    h, w = x.shape[-2:]
    out = x.new_zeros((num_classes + 1, h, w))
    if keys_l:
        out[torch.tensor(keys_l, device=x.device)] = x
    if not has_bg:
        if bg_threshold is not None:
            out[BACKGROUND] = bg_threshold
        else:
            fg_max = x.amax(dim=0) if keys_l else x.new_zeros((h, w))
            # The clamp keeps maps slightly above 1 from giving NaN under a fractional power.
            out[BACKGROUND] = (1.0 - fg_max).clamp_min(0.0).pow(bg_power)
    return out.numpy() if is_np else out


def _argmax_with_plane(cams: np.ndarray, plane: float) -> np.ndarray:
    """argmax over [plane; cams] → (H, W) int64 in 0..K (0 = the plane wins, ties included)."""
    stacked = np.concatenate([np.full((1,) + cams.shape[1:], plane, dtype=cams.dtype), cams], 0)
    return np.argmax(stacked, axis=0).astype(np.int64)


def seeds_from_cams(
    image: ArrayLike,
    cams: ArrayLike,
    keys: Any,
    *,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    crf: bool = True,
    crf_kwargs: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Confident foreground/background seeds with an unsure band (IRN `cam_to_ir_label`).

    fg = argmax([fg_threshold plane; cams]) and bg = argmax([bg_threshold plane; cams]); with
    `crf`, each is smoothed by `dense_crf_labels(image, ·, num_labels=K+1, gt_prob=0.7)`
    (IRN settings, overridable through `crf_kwargs`). With keys_ext = [0] + keys, a pixel gets
    keys_ext[fg] where fg is foreground, 0 where fg and bg both say background, and 255 (unsure)
    where fg says background but bg says foreground.

    Args:
        image: (H, W, 3) uint8 RGB (used only when `crf`).
        cams: (K, H, W) float in [0, 1] (numpy, or a tensor which is copied to the CPU); K may be 0.
        keys: (K,) int class indices (1..C).
        fg_threshold: background score for the foreground pass (IRN 0.30).
        bg_threshold: background score for the background pass (IRN 0.05).
        crf: smooth both argmax maps with a label CRF (needs pydensecrf2).
        crf_kwargs: extra keyword arguments for `dense_crf_labels` (e.g. `gt_prob`, `num_iter`).

    Returns:
        (H, W) uint8 numpy array with values in {0} ∪ keys ∪ {255}.
    """
    keys_l = _keys_list(keys)
    if isinstance(cams, Tensor):
        cams = cams.detach().cpu().numpy()
    cams = np.asarray(cams)
    _check_cams(cams, keys_l)
    if any(k < 0 or k >= IGNORE_INDEX for k in keys_l):
        raise ValueError(f"keys must be class indices in 0..254, got {keys_l}")
    h, w = cams.shape[-2:]
    if not keys_l:
        return np.zeros((h, w), dtype=np.uint8)

    fg = _argmax_with_plane(cams, fg_threshold)
    bg = _argmax_with_plane(cams, bg_threshold)
    if crf:
        from wsss.ops.crf import dense_crf_labels

        if isinstance(image, Tensor):
            image = image.detach().cpu().numpy()
        kwargs = {"gt_prob": 0.7, **(crf_kwargs or {})}
        fg = dense_crf_labels(image, fg, num_labels=len(keys_l) + 1, **kwargs)
        bg = dense_crf_labels(image, bg, num_labels=len(keys_l) + 1, **kwargs)

    keys_ext = np.array([BACKGROUND, *keys_l], dtype=np.int64)
    fg_cls = keys_ext[fg]
    bg_cls = keys_ext[bg]
    seeds = fg_cls.copy()
    seeds[fg_cls == BACKGROUND] = IGNORE_INDEX
    seeds[(fg_cls + bg_cls) == BACKGROUND] = BACKGROUND
    return seeds.astype(np.uint8)
