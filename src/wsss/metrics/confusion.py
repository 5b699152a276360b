"""Confusion matrices over labelled pixels and their reductions (IoU, mIoU, precision, recall).

Conventions (docs/methods/evaluation.md §2): rows are the ground-truth class, columns the
predicted class, `N` = number of classes *including* background (21 for VOC). The matrix has one
extra last column, `N`, counting labelled pixels whose prediction is 255 (the prediction abstained,
e.g. an ignore band in seed masks). Ground-truth 255 (void) is never counted.

Reductions use only the N×N block: abstained pixels are neither hits nor errors, and `coverage`
reports their share separately. A class with no ground-truth and no predicted pixel is "absent":
its IoU is NaN and excluded from the mean (chainercv, used by IRN/AMN; the default) or 0 and
counted (SEAM/ICAM/1-Stage evaluation scripts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from wsss.data.labels import IGNORE_INDEX
from wsss.engine.distributed import all_reduce_sum

Absent = Literal["nan", "zero"]

__all__ = [
    "ConfusionMeter",
    "as_label_tensor",
    "confusion_matrix",
    "coverage",
    "iou",
    "miou",
    "pixel_accuracy",
    "precision",
    "recall",
    "summarize_confusion",
]


def as_label_tensor(
    x: torch.Tensor | np.ndarray, *, name: str, device: torch.device | None = None
) -> torch.Tensor:
    """An integer label array as an int64 tensor (on `device` when given).

    Raises:
        TypeError: when `x` does not hold integers.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name}: expected integer class indices, got dtype {t.dtype}")
    if device is not None:
        t = t.to(device)
    return t.long()


def check_labels(t: torch.Tensor, num_classes: int, *, name: str) -> None:
    """Raise ValueError unless every value of `t` is in 0..num_classes-1 or 255."""
    bad = ((t < 0) | (t >= num_classes)) & (t != IGNORE_INDEX)
    if bool(bad.any()):
        values = torch.unique(t[bad]).tolist()
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise ValueError(
            f"{name} holds values outside 0..{num_classes - 1} and {IGNORE_INDEX}: {shown} "
            f"(num_classes={num_classes} counts background)"
        )


def confusion_matrix(
    preds: torch.Tensor | np.ndarray, gts: torch.Tensor | np.ndarray, num_classes: int
) -> torch.Tensor:
    """Confusion matrix of one prediction against its ground truth, in one `bincount`.

    Args:
        preds: int (any shape, e.g. (H, W) or (B, H, W)), values in 0..N-1 or 255 (abstained).
        gts: int, same shape as `preds`, values in 0..N-1 or 255 (void, never counted).
        num_classes: N, the number of classes including background.

    Returns:
        int64 (N, N+1) on the device of the inputs (of `gts` when they differ): entry [i, j] counts
        pixels with ground truth i predicted as j; column N counts ground-truth-labelled pixels
        whose prediction is 255.

    Raises:
        ValueError: for a shape mismatch or values outside 0..N-1 and 255.
        TypeError: for non-integer inputs.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    device = gts.device if isinstance(gts, torch.Tensor) else (
        preds.device if isinstance(preds, torch.Tensor) else None
    )
    gts_t = as_label_tensor(gts, name="gts", device=device)
    preds_t = as_label_tensor(preds, name="preds", device=device)
    if preds_t.shape != gts_t.shape:
        raise ValueError(f"preds shape {tuple(preds_t.shape)} != gts shape {tuple(gts_t.shape)}")
    check_labels(gts_t, num_classes, name="gts")
    check_labels(preds_t, num_classes, name="preds")
    n = num_classes
    labelled = gts_t != IGNORE_INDEX
    gt = gts_t[labelled]
    pred = preds_t[labelled]
    pred = torch.where(pred == IGNORE_INDEX, torch.full_like(pred, n), pred)
    counts = torch.bincount(gt * (n + 1) + pred, minlength=n * (n + 1))
    return counts.reshape(n, n + 1)


def _block(conf: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, int]:
    """The N×N block (float64) of a (..., N, N+1) confusion stack, and N."""
    c = torch.as_tensor(conf)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2] + 1:
        raise ValueError(f"expected a (..., N, N+1) confusion matrix, got shape {tuple(c.shape)}")
    n = c.shape[-2]
    return c[..., :, :n].to(torch.float64), n


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with NaN where den == 0."""
    nan = torch.full_like(num, math.nan)
    return torch.where(den > 0, num / den.clamp_min(1), nan)


def iou(conf: torch.Tensor | np.ndarray, *, absent: Absent = "nan") -> torch.Tensor:
    """Per-class IoU, `M_cc / (Σ_j M_cj + Σ_i M_ic − M_cc)`, on the N×N block.

    Args:
        conf: int (..., N, N+1) confusion matrix or stack of them.
        absent: "nan" — a class with no ground-truth and no predicted pixel gets NaN (chainercv);
            "zero" — it gets 0 (SEAM-style evaluation scripts).

    Returns:
        float64 (..., N), values in [0, 1] (or NaN).
    """
    if absent not in ("nan", "zero"):
        raise ValueError(f"absent must be 'nan' or 'zero', got {absent!r}")
    block, _ = _block(conf)
    tp = torch.diagonal(block, dim1=-2, dim2=-1)
    union = block.sum(-1) + block.sum(-2) - tp
    out = _divide(tp, union)
    return torch.nan_to_num(out, nan=0.0) if absent == "zero" else out


def miou(conf: torch.Tensor | np.ndarray, *, absent: Absent = "nan") -> torch.Tensor:
    """Mean IoU over classes (background included).

    Args:
        conf: int (..., N, N+1).
        absent: "nan" — absent classes are excluded (`nanmean`); "zero" — they count as 0.

    Returns:
        float64 (...) (0-dim for one matrix); NaN when every class is absent under "nan".
    """
    per_class = iou(conf, absent=absent)
    return per_class.nanmean(-1) if absent == "nan" else per_class.mean(-1)


def precision(conf: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-class precision `M_cc / Σ_i M_ic` on the N×N block.

    Returns:
        float64 (..., N); NaN for a class never predicted.
    """
    block, _ = _block(conf)
    return _divide(torch.diagonal(block, dim1=-2, dim2=-1), block.sum(-2))


def recall(conf: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-class recall `M_cc / Σ_j M_cj` on the N×N block (abstained pixels excluded).

    Returns:
        float64 (..., N); NaN for a class without (non-abstained) ground-truth pixels.
    """
    block, _ = _block(conf)
    return _divide(torch.diagonal(block, dim1=-2, dim2=-1), block.sum(-1))


def pixel_accuracy(conf: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Share of correctly labelled pixels among labelled, non-abstained pixels.

    Returns:
        float64 (...); NaN when no pixel is counted.
    """
    block, _ = _block(conf)
    return _divide(torch.diagonal(block, dim1=-2, dim2=-1).sum(-1), block.sum((-2, -1)))


def coverage(conf: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Share of ground-truth-labelled pixels whose prediction is not 255.

    Returns:
        float64 (...) in [0, 1]; NaN when no pixel is counted.
    """
    block, _ = _block(conf)
    total = torch.as_tensor(conf).to(torch.float64).sum((-2, -1))
    return _divide(block.sum((-2, -1)), total)


def json_float(x: float) -> float | None:
    """`x` as a JSON-safe float: NaN becomes None."""
    return None if math.isnan(x) else float(x)


def class_name_list(class_names: Sequence[str] | None, n: int) -> list[str]:
    """The given names (checked to number `n`), or "0".."n-1" when None."""
    if class_names is None:
        return [str(i) for i in range(n)]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names given for {n} classes")
    return list(class_names)


def summarize_confusion(
    conf: torch.Tensor, class_names: Sequence[str] | None = None, *, absent: Absent = "nan"
) -> dict[str, Any]:
    """JSON-serialisable scores of one (N, N+1) matrix (NaN becomes None).

    Returns:
        dict with `miou`, `iou`/`precision`/`recall` (class name → value), `pixel_accuracy`,
        `coverage`, `num_pixels` (ground-truth-labelled pixels, abstained included), `absent`.
    """
    conf = torch.as_tensor(conf).cpu()
    names = class_name_list(class_names, conf.shape[-2])

    def per_class(values: torch.Tensor) -> dict[str, float | None]:
        return {k: json_float(v) for k, v in zip(names, values.tolist(), strict=True)}

    return {
        "miou": json_float(float(miou(conf, absent=absent))),
        "iou": per_class(iou(conf, absent=absent)),
        "precision": per_class(precision(conf)),
        "recall": per_class(recall(conf)),
        "pixel_accuracy": json_float(float(pixel_accuracy(conf))),
        "coverage": json_float(float(coverage(conf))),
        "num_pixels": int(conf.sum()),
        "absent": absent,
    }


class ConfusionMeter:
    """Accumulates a (N, N+1) confusion matrix over images; reduce with `summary`.

    The matrix lives on the device of the first update. Under DDP each rank updates with its own
    images, then `all_reduce()` sums the matrices over ranks (exact, int64).

    Args:
        num_classes: N, the number of classes including background.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self._matrix: torch.Tensor | None = None

    def reset(self) -> None:
        self._matrix = None

    def _add(self, conf: torch.Tensor) -> None:
        if self._matrix is None:
            self._matrix = conf.clone()
        else:
            self._matrix += conf.to(self._matrix.device)

    def update(self, preds: torch.Tensor | np.ndarray, gts: torch.Tensor | np.ndarray) -> None:
        """Add one prediction (any shape, int, 0..N-1 or 255) against its ground truth."""
        self._add(confusion_matrix(preds, gts, self.num_classes))

    def merge(self, other: ConfusionMeter) -> None:
        """Add the counts of another meter with the same number of classes."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        if other._matrix is not None:
            self._add(other._matrix)

    def all_reduce(self) -> None:
        """Sum the matrix over DDP ranks (identity in one process). Every rank must call it."""
        if self._matrix is None:
            self._matrix = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)
        all_reduce_sum(self._matrix)

    @property
    def matrix(self) -> torch.Tensor:
        """int64 (N, N+1), zeros before any update."""
        if self._matrix is None:
            return torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)
        return self._matrix

    def summary(
        self, class_names: Sequence[str] | None = None, absent: Absent = "nan"
    ) -> dict[str, Any]:
        """Scores as a JSON-serialisable dict; see `summarize_confusion`."""
        return summarize_confusion(self.matrix, class_names, absent=absent)
