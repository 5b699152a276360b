"""Evaluation metrics: accumulate sufficient statistics (confusion matrices, boundary match
counts), reduce them to scores later. Plots live in `wsss.metrics.plots` (imports matplotlib
lazily)."""

from wsss.metrics.confusion import (
    ConfusionMeter,
    confusion_matrix,
    coverage,
    iou,
    miou,
    pixel_accuracy,
    precision,
    recall,
    summarize_confusion,
)
from wsss.metrics.contour import (
    ContourMeter,
    boundary_prf,
    boundary_tolerance,
    contour_counts,
    contour_fscore,
    seg_to_boundary,
)
from wsss.metrics.sweep import ThresholdSweep, default_thresholds, sweep_confusion

__all__ = [
    "ConfusionMeter",
    "ContourMeter",
    "ThresholdSweep",
    "boundary_prf",
    "boundary_tolerance",
    "confusion_matrix",
    "contour_counts",
    "contour_fscore",
    "coverage",
    "default_thresholds",
    "iou",
    "miou",
    "pixel_accuracy",
    "precision",
    "recall",
    "seg_to_boundary",
    "summarize_confusion",
    "sweep_confusion",
]
