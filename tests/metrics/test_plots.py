"""Plots write non-empty PNG files (and nothing else in the folder)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsss.metrics.plots import plot_per_class_iou, plot_threshold_curves, plot_threshold_histogram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_threshold_curves(tmp_path):
    th = np.round(np.arange(0, 1, 0.05), 2)
    curves = {
        "CAM": (th, np.exp(-((th - 0.3) ** 2) / 0.05) * 0.5),
        "AMN": (list(th), [None] + list(np.exp(-((th[1:] - 0.5) ** 2) / 0.1) * 0.6)),
    }
    out = plot_threshold_curves(curves, tmp_path / "sub" / "curves.png", marks={"IRN": 0.15},
                                title="mIoU vs τ")
    assert out == tmp_path / "sub" / "curves.png" and _is_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary left over
    assert _is_png(plot_threshold_curves(curves, tmp_path / "c2.png", marks=[0.25]))
    with pytest.raises(ValueError):
        plot_threshold_curves({"bad": ([0.1, 0.2], [0.5])}, tmp_path / "bad.png")


def test_threshold_histogram(tmp_path):
    values = list(np.random.default_rng(0).beta(2, 5, 200)) + [None, math.nan]
    assert _is_png(plot_threshold_histogram(values, tmp_path / "hist.png", bins=10, title="AMN"))
    assert _is_png(plot_threshold_histogram([], tmp_path / "empty.png"))


def test_per_class_iou(tmp_path):
    iou = {"background": 0.8, "aeroplane": 0.55, "bicycle": None, "bird": float("nan")}
    assert _is_png(plot_per_class_iou(iou, tmp_path / "iou.png", title="val"))
