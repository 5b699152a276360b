"""Background-threshold sweeps: mIoU(τ) over a grid of thresholds in one pass over the CAMs.

A CAM prediction at background threshold τ is the argmax over [τ plane; cams], mapped through the
channel keys (IRN `step/eval_cam.py`, AMN, PSA, SEAM; docs/methods/evaluation.md §2.2): a pixel
gets class `keys[a]` with `a = argmax_k cams[k]` when `m = max_k cams[k] > τ`, else background 0.
Ties go to background (the τ plane comes first) and, among channels, to the first one.

Neither `m` nor `a` depends on τ, so one image contributes a histogram over
(bin of m in the threshold grid, ground-truth class, a); cumulative sums over the bins give the
(T, N, N+1) stack of confusion matrices, one per τ, in O(HW + T·N²) instead of O(T·HW).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from wsss.data.labels import IGNORE_INDEX
from wsss.engine import distributed
from wsss.metrics.confusion import (
    Absent,
    as_label_tensor,
    check_labels,
    class_name_list,
    iou,
    json_float,
    miou,
)
from wsss.ops.threads import single_cpu_thread

__all__ = ["ThresholdSweep", "default_thresholds", "sweep_confusion"]


def default_thresholds(step: float = 0.01, stop: float = 1.0, start: float = 0.0) -> np.ndarray:
    """The grid start, start + step, ... < stop, rounded so that e.g. 0.15 equals the literal 0.15.

    Returns:
        float64 (T,), e.g. 0.00, 0.01, ..., 0.99 for the defaults; `stop=0.6` gives SEAM's grid.
    """
    if step <= 0 or stop <= start:
        raise ValueError(f"need step > 0 and stop > start, got {start=}, {stop=}, {step=}")
    # The small slack keeps `stop` itself out when (stop - start) / step is an integer up to
    # rounding error (0.6 / 0.01 = 59.999...).
    count = math.ceil((stop - start) / step - 1e-9)
    return np.round(start + step * np.arange(count), 10)


def _as_thresholds(thresholds: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    th = np.asarray(
        thresholds.cpu().numpy() if isinstance(thresholds, torch.Tensor) else thresholds,
        dtype=np.float64,
    )
    if th.ndim != 1 or th.size == 0 or not np.isfinite(th).all():
        raise ValueError(f"thresholds must be a non-empty finite 1-D sequence, got {th!r}")
    return th


def sweep_confusion(
    cams: torch.Tensor | np.ndarray,
    keys: torch.Tensor | np.ndarray | Sequence[int],
    gts: torch.Tensor | np.ndarray,
    thresholds: Sequence[float] | np.ndarray | torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Confusion matrices of one image's CAM prediction at every background threshold.

    For every τ the result equals exactly `confusion_matrix(mask_τ, gts, num_classes)` with
    `mask_τ = where(max_k cams > τ, keys[argmax_k cams], 0)`, the comparison made in the CAMs'
    dtype (the τ plane of `argmax([τ plane; cams])` takes the CAMs' dtype, as with `np.pad` in
    IRN).

    Args:
        cams: float (K, H, W), scores in [0, 1]; K may be 0 (every pixel is background).
        keys: int (K,), the class index of each channel (1..C; 0 for a background channel).
        gts: int (H, W), values in 0..N-1 or 255 (void, not counted).
        thresholds: (T,) background thresholds, any order (the output follows it).
        num_classes: N, the number of classes including background.

    Returns:
        int64 (T, N, N+1) on the device of `cams`; column N (abstained) is always 0.
    """
    with single_cpu_thread(_on_cpu(cams)):
        return _sweep_confusion(cams, keys, gts, thresholds, num_classes)


def _on_cpu(cams: torch.Tensor | np.ndarray) -> bool:
    return isinstance(cams, np.ndarray) or cams.device.type == "cpu"


def _sweep_confusion(
    cams: torch.Tensor | np.ndarray,
    keys: torch.Tensor | np.ndarray | Sequence[int],
    gts: torch.Tensor | np.ndarray,
    thresholds: Sequence[float] | np.ndarray | torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    cams_t = torch.from_numpy(np.ascontiguousarray(cams)) if isinstance(cams, np.ndarray) else cams
    if cams_t.ndim != 3 or not cams_t.is_floating_point():
        raise ValueError(f"cams must be float (K, H, W), got {cams_t.dtype} {tuple(cams_t.shape)}")
    device = cams_t.device
    if not isinstance(keys, (torch.Tensor, np.ndarray)):
        keys = np.asarray(keys, dtype=np.int64)
    keys_t = as_label_tensor(keys, name="keys", device=device).reshape(-1)
    gts_t = as_label_tensor(gts, name="gts", device=device)
    num_channels = cams_t.shape[0]
    if keys_t.numel() != num_channels:
        raise ValueError(f"{keys_t.numel()} keys for {num_channels} CAM channels")
    if tuple(gts_t.shape) != tuple(cams_t.shape[1:]):
        raise ValueError(f"gts shape {tuple(gts_t.shape)} != CAM size {tuple(cams_t.shape[1:])}")
    check_labels(gts_t, num_classes, name="gts")
    if bool(((keys_t < 0) | (keys_t >= num_classes)).any()):
        raise ValueError(f"keys {keys_t.tolist()} outside 0..{num_classes - 1}")
    th = _as_thresholds(thresholds)
    n, num_th = num_classes, th.size

    gt = gts_t.reshape(-1)
    labelled = gt != IGNORE_INDEX
    gt = gt[labelled]
    stack = torch.zeros(num_th, n, n + 1, dtype=torch.int64, device=device)
    if num_channels == 0:
        stack[:, :, 0] = torch.bincount(gt, minlength=n)
        return stack

    # torch.max returns the first maximal channel on ties (and, on CPU, is much faster than
    # argmax for a reduction over the leading dim); it propagates NaN, caught below.
    top_score, top = cams_t.reshape(num_channels, -1).max(0)
    top_score, top = top_score[labelled], top[labelled]
    if not bool(torch.isfinite(top_score).all()):
        raise ValueError("cams hold NaN or infinite values")

    order = np.argsort(th, kind="stable")
    # Compare in the CAMs' dtype, as the τ plane would be stored; the cast is monotone, so the
    # sorted grid stays sorted. bins[i] = number of thresholds below the pixel's max score, i.e.
    # the pixel is foreground exactly for the sorted thresholds t < bins[i].
    # Both sides of the search are values of the CAMs' dtype, so searching in float32/64 gives
    # the bins of an exact comparison; other dtypes are searched in float64.
    th_sorted = torch.from_numpy(th[order]).to(device=device, dtype=cams_t.dtype)
    if cams_t.dtype not in (torch.float32, torch.float64):
        th_sorted, top_score = th_sorted.double(), top_score.double()
    bins = torch.searchsorted(th_sorted, top_score, side="left")
    hist = torch.bincount(
        (bins * n + gt) * num_channels + top, minlength=(num_th + 1) * n * num_channels
    ).reshape(num_th + 1, n, num_channels)
    # Foreground at sorted threshold t: pixels in bins t+1..T (reverse cumulative sum).
    foreground = hist.flip(0).cumsum(0).flip(0)[1:]
    stack.index_add_(2, keys_t, foreground)
    # Background at sorted threshold t: pixels in bins 0..t, whatever their top channel.
    stack[:, :, 0] += hist.sum(2).cumsum(0)[:num_th]
    out = torch.empty_like(stack)
    out[torch.from_numpy(order).to(device)] = stack
    return out


class ThresholdSweep:
    """Accumulates the (T, N, N+1) confusion stack of CAM predictions over a threshold grid.

    Also records, per image, the threshold maximising that image's mIoU (the mean IoU over the
    classes present in the image's ground truth or prediction), as in AMN (arXiv 2205.03860)
    Fig. 1a. Both the split-level best threshold and the per-image ones are chosen with the
    ground truth: they are oracle numbers, not a valid protocol for reporting results.

    Args:
        num_classes: N, the number of classes including background.
        thresholds: (T,) grid; `default_thresholds()` (0.00..0.99) when None.
    """

    def __init__(
        self,
        num_classes: int,
        thresholds: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.thresholds = _as_thresholds(default_thresholds() if thresholds is None else thresholds)
        self._stack: torch.Tensor | None = None
        # (name or None, index of the image's best threshold or None, the image's best mIoU)
        self._records: list[tuple[str | None, int | None, float]] = []
        self._names: set[str] = set()

    def reset(self) -> None:
        self._stack = None
        self._records = []
        self._names = set()

    def update(
        self,
        cams: torch.Tensor | np.ndarray,
        keys: torch.Tensor | np.ndarray | Sequence[int],
        gt: torch.Tensor | np.ndarray,
        name: str | None = None,
    ) -> torch.Tensor:
        """Add one image.

        Args:
            cams: float (K, H, W) in [0, 1]; keys: int (K,); gt: int (H, W) with 255 = void.
            name: the image name, the key of its per-image best threshold.

        Returns:
            float64 (T,) this image's mIoU at each threshold (NaN if it has no labelled pixel).
        """
        if name is not None and name in self._names:
            raise ValueError(f"image {name!r} was already added to this sweep")
        with single_cpu_thread(_on_cpu(cams)):
            stack = _sweep_confusion(cams, keys, gt, self.thresholds, self.num_classes)
            if self._stack is None:
                self._stack = stack.clone()
            else:
                self._stack += stack.to(self._stack.device)
            curve = miou(stack.cpu()).numpy()
        best = None if np.isnan(curve).all() else int(np.nanargmax(curve))
        self._records.append((name, best, math.nan if best is None else float(curve[best])))
        if name is not None:
            self._names.add(name)
        return torch.from_numpy(curve)

    def all_reduce(self) -> None:
        """Sum the stack over DDP ranks and gather the per-image records (call once, on all ranks).

        Raises:
            ValueError: when two ranks saw images with the same name.
        """
        if self._stack is None:
            self._stack = torch.zeros(
                self.thresholds.size, self.num_classes, self.num_classes + 1, dtype=torch.int64
            )
        distributed.all_reduce_sum(self._stack)
        if distributed.is_initialized() and distributed.world_size() > 1:
            gathered: list[Any] = [None] * distributed.world_size()
            dist.all_gather_object(gathered, self._records)
            self._records = [record for part in gathered for record in part]
            named = [r[0] for r in self._records if r[0] is not None]
            if len(named) != len(set(named)):
                raise ValueError("the same image name was swept on several ranks")
            self._names = set(named)

    @property
    def stack(self) -> torch.Tensor:
        """int64 (T, N, N+1), one confusion matrix per threshold (zeros before any update)."""
        if self._stack is None:
            n = self.num_classes
            return torch.zeros(self.thresholds.size, n, n + 1, dtype=torch.int64)
        return self._stack

    @property
    def num_images(self) -> int:
        return len(self._records)

    def miou_curve(self, absent: Absent = "nan") -> np.ndarray:
        """float64 (T,) split-level mIoU at each threshold."""
        return miou(self.stack.cpu(), absent=absent).numpy()

    def _index(self, threshold: float) -> int:
        hits = np.flatnonzero(np.isclose(self.thresholds, threshold, rtol=0.0, atol=1e-9))
        if hits.size == 0:
            raise ValueError(f"threshold {threshold} is not in the sweep grid {self.thresholds}")
        return int(hits[0])

    def miou_at(self, threshold: float, absent: Absent = "nan") -> float:
        """Split-level mIoU at a threshold of the grid (ValueError otherwise)."""
        return float(self.miou_curve(absent)[self._index(threshold)])

    def matrix_at(self, threshold: float) -> torch.Tensor:
        """int64 (N, N+1) confusion matrix at a threshold of the grid."""
        return self.stack[self._index(threshold)]

    def per_image_best_thresholds(self) -> dict[str, float | None]:
        """Image name → the threshold maximising its own mIoU (oracle; first in the grid on ties).

        Unnamed images are keyed `#<i>` by their position in the update order (rank order after
        `all_reduce`). The value is None for an image without labelled pixels.
        """
        return {
            (name if name is not None else f"#{i}"): (
                None if best is None else float(self.thresholds[best])
            )
            for i, (name, best, _) in enumerate(self._records)
        }

    def summary(
        self, class_names: Sequence[str] | None = None, absent: Absent = "nan"
    ) -> dict[str, Any]:
        """JSON-serialisable sweep results (NaN becomes None).

        Returns:
            dict with `thresholds` and `miou` (lists of T), `best_threshold`, `best_miou` and
            `best_iou` (class name → IoU at the best threshold), `best_is_oracle` (always True:
            the best threshold is chosen with the ground truth), `num_images`,
            `per_image_best_thresholds` (name → τ) and `mean_per_image_best_miou`.
        """
        curve = self.miou_curve(absent)
        best = None if np.isnan(curve).all() else int(np.nanargmax(curve))
        names = class_name_list(class_names, self.num_classes)
        if best is None:
            best_iou: dict[str, float | None] = {k: None for k in names}
        else:
            values = iou(self.stack[best].cpu(), absent=absent).tolist()
            best_iou = {k: json_float(v) for k, v in zip(names, values, strict=True)}
        per_image = [r[2] for r in self._records if r[1] is not None]
        return {
            "thresholds": [float(t) for t in self.thresholds],
            "miou": [json_float(float(v)) for v in curve],
            "best_threshold": None if best is None else float(self.thresholds[best]),
            "best_miou": None if best is None else json_float(float(curve[best])),
            "best_iou": best_iou,
            "best_is_oracle": True,
            "absent": absent,
            "num_images": self.num_images,
            "per_image_best_thresholds": self.per_image_best_thresholds(),
            "mean_per_image_best_miou": float(np.mean(per_image)) if per_image else None,
        }
