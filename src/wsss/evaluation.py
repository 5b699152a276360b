"""Score folders of masks or CAM files against a dataset's ground truth; write JSON and plots.

The math lives in `wsss.metrics`; this module reads files, feeds the accumulators, all-reduces
them across ranks and writes results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from wsss.engine import distributed as dist
from wsss.io import DataError, load_cams, load_mask, write_text
from wsss.logs import progress
from wsss.metrics.confusion import ConfusionMeter
from wsss.metrics.contour import ContourMeter
from wsss.metrics.sweep import ThresholdSweep
from wsss.ops.cam import cams_to_mask


def _gt_items(dataset: Any, names: list[str] | None = None) -> list[tuple[int, str]]:
    if not dataset.has_masks:
        raise DataError(f"split has no ground-truth masks under {dataset.root}; cannot evaluate")
    wanted = set(names) if names is not None else None
    return [(i, n) for i, n in enumerate(dataset.names) if wanted is None or n in wanted]


def _check_pred_dir(pred_dir: Path, suffix: str, first: str | None) -> None:
    """Name the real problem before the first missing file: a folder that does not exist, or
    one holding the other kind of prediction (CAM `.npz` files given as masks, or masks given
    as CAMs)."""
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    if first is None or (pred_dir / f"{first}{suffix}").is_file():
        return
    other = ".npz" if suffix == ".png" else ".png"
    if not any(pred_dir.glob(f"*{suffix}")) and any(pred_dir.glob(f"*{other}")):
        hint = ("it holds CAM .npz files: add --cams (or use `wsss sweep`)" if suffix == ".png"
                else "it holds .png masks: drop --cams (or use `wsss eval`)")
        raise DataError(f"{pred_dir}: no {suffix} predictions ({first}{suffix} missing); {hint}")


def _check_pred_values(pred: np.ndarray, num_classes: int, path: Path) -> None:
    """Predicted values must be class indices 0..C or 255 (abstain)."""
    values = np.flatnonzero(np.bincount(pred.reshape(-1), minlength=256))
    bad = values[(values > num_classes) & (values != 255)]
    if bad.size:
        raise DataError(f"{path}: predicted values {bad[:8].tolist()} outside 0..{num_classes} "
                        f"and 255 (the dataset has {num_classes} foreground classes)")


def _check_shape(pred: np.ndarray, gt: np.ndarray, path: Path) -> None:
    if pred.shape != gt.shape:
        raise DataError(f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} but ground truth "
                        f"is {gt.shape[1]}x{gt.shape[0]}")


def evaluate_masks(
    pred_dir: str | Path,
    dataset: Any,
    *,
    absent: str = "nan",
    contour: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Score `pred_dir/<name>.png` for every image of `dataset` (rank-sharded, all-reduced).

    Predicted 255 counts as abstained (reported as coverage), not as a class.
    """
    pred_dir = Path(pred_dir)
    n = dataset.num_classes + 1
    meter = ConfusionMeter(n)
    contour_meter = ContourMeter(n) if contour else None
    items = _gt_items(dataset)
    _check_pred_dir(pred_dir, ".png", items[0][1] if items else None)
    for index, name in progress(dist.shard(items), desc=desc, enabled=dist.is_main()):
        path = pred_dir / f"{name}.png"
        if not path.is_file():
            raise DataError(f"prediction missing: {path}")
        pred = load_mask(path)
        _check_pred_values(pred, dataset.num_classes, path)
        gt = dataset.load_mask(index)
        _check_shape(pred, gt, path)
        meter.update(pred, gt)
        if contour_meter is not None:
            contour_meter.update(pred, gt)
    meter.all_reduce()
    result = {"masks": str(pred_dir), **meter.summary(dataset.class_names, absent=absent)}
    if contour_meter is not None:
        contour_meter.all_reduce()
        result["contour"] = contour_meter.summary(dataset.class_names)
    return result


def evaluate_cams(
    cam_dir: str | Path,
    dataset: Any,
    *,
    threshold: float,
    thresholds: np.ndarray,
    absent: str = "nan",
    desc: str = "eval cams",
) -> dict[str, Any]:
    """Score `cam_dir/<name>.npz` at a fixed background threshold and over a sweep, in one pass.

    The fixed threshold is set in advance; the sweep's best threshold is chosen with ground
    truth and reported as the oracle.
    """
    cam_dir = Path(cam_dir)
    n = dataset.num_classes + 1
    fixed = ConfusionMeter(n)
    sweep = ThresholdSweep(n, thresholds)
    items = _gt_items(dataset)
    _check_pred_dir(cam_dir, ".npz", items[0][1] if items else None)
    for index, name in progress(dist.shard(items), desc=desc, enabled=dist.is_main()):
        cams, keys = load_cams(cam_dir / f"{name}.npz")
        if keys.size and keys.min() == 0:  # an explicit background channel is dropped here
            cams, keys = cams[keys > 0], keys[keys > 0]
        gt = dataset.load_mask(index)
        _check_shape(cams[0] if len(cams) else gt, gt, cam_dir / f"{name}.npz")
        fixed.update(np.asarray(cams_to_mask(cams, keys, bg_threshold=threshold)), gt)
        sweep.update(cams, keys, gt, name=name)
    fixed.all_reduce()
    sweep.all_reduce()
    return {
        "cams": str(cam_dir),
        "fixed": {"threshold": threshold, "threshold_choice": "fixed in advance",
                  **fixed.summary(dataset.class_names, absent=absent)},
        "sweep": {"threshold_choice": "oracle (best on ground truth)",
                  **sweep.summary(dataset.class_names)},
    }


def write_result(out_dir: str | Path, result: dict[str, Any], *, name: str = "metrics.json") -> Path:
    """Write `result` as JSON (NaN → null) under `out_dir`."""
    path = Path(out_dir) / name
    write_text(path, json.dumps(_clean(result), indent=2) + "\n")
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    return value
