"""PNG figures of metric results: mIoU(τ) curves, per-image optimal τ histograms, per-class IoU.

Matplotlib (an Agg canvas; pyplot and the global backend untouched) is imported inside the
functions, so importing `wsss.metrics` stays cheap; files are written through
`wsss.io.atomic_write`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss.io import atomic_write

__all__ = ["plot_per_class_iou", "plot_threshold_curves", "plot_threshold_histogram"]


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas: no pyplot state, no change to the global backend.
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, out_png: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    with atomic_write(out_png, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(out_png)


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def plot_threshold_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    out_png: str | Path,
    *,
    marks: Sequence[float] | Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """mIoU as a function of the background threshold for several CAM sources.

    The best τ of each curve is marked with a dot and annotated (an oracle choice).

    Args:
        curves: label → (thresholds (T,), mIoU (T,) in [0, 1]; None/NaN points are skipped).
        out_png: output path.
        marks: fixed thresholds to draw as vertical dashed lines (e.g. a method's τ = 0.15), as a
            list or label → τ.
        title: figure title.

    Returns:
        The written path.
    """
    if not curves:
        raise ValueError("no curves to plot")
    fig, ax = _figure(6.4, 4.2)
    for label, (thresholds, values) in curves.items():
        th = np.asarray(thresholds, dtype=np.float64)
        mi = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        if th.shape != mi.shape:
            raise ValueError(f"curve {label!r}: {th.size} thresholds for {mi.size} values")
        (line,) = ax.plot(th, 100 * mi, label=label)
        if np.isfinite(mi).any():
            best = int(np.nanargmax(mi))
            ax.plot(th[best], 100 * mi[best], "o", color=line.get_color())
            ax.annotate(
                f"{100 * mi[best]:.1f} @ {th[best]:.2f}",
                (th[best], 100 * mi[best]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=8,
                color=line.get_color(),
            )
    if marks:
        items = marks.items() if isinstance(marks, Mapping) else ((None, t) for t in marks)
        styles = ("--", ":", "-.")
        for i, (label, tau) in enumerate(items):
            name = f"τ = {tau:.2f}" if label is None else f"{label} (τ = {tau:.2f})"
            ax.axvline(float(tau), linestyle=styles[i % 3], color="0.35", linewidth=1.0, label=name)
    ax.margins(y=0.12)  # room for the annotations above the maxima
    ax.set_xlabel("background threshold τ")
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, out_png)


def plot_threshold_histogram(
    values: Iterable[float | None],
    out_png: str | Path,
    *,
    bins: int | Sequence[float] = 20,
    title: str | None = None,
) -> Path:
    """Histogram of per-image optimal background thresholds (as in AMN, arXiv 2205.03860, Fig. 1a).

    Args:
        values: one threshold per image (None/NaN, for images without labelled pixels, skipped).
        out_png: output path.
        bins: number of bins over [0, 1], or explicit bin edges.
        title: figure title.

    Returns:
        The written path.
    """
    data = _finite(values)
    fig, ax = _figure(6.4, 4.2)
    edges = np.linspace(0.0, 1.0, bins + 1) if isinstance(bins, int) else np.asarray(bins)
    ax.hist(data, bins=edges, color="tab:blue", edgecolor="white")
    ax.set_xlabel("per-image optimal background threshold")
    ax.set_ylabel("number of images")
    if data.size:
        ax.axvline(float(np.mean(data)), linestyle="--", color="0.3", linewidth=1.0,
                   label=f"mean {np.mean(data):.2f} (n = {data.size})")
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, out_png)


def plot_per_class_iou(
    iou: Mapping[str, float | None], out_png: str | Path, *, title: str | None = None
) -> Path:
    """Bar chart of per-class IoU (in [0, 1]; None/NaN classes drawn as empty, labelled "n/a").

    Args:
        iou: class name → IoU, e.g. `ConfusionMeter.summary()["iou"]`.
        out_png: output path.
        title: figure title; the mean over the finite values is appended.

    Returns:
        The written path.
    """
    if not iou:
        raise ValueError("no classes to plot")
    names = list(iou)
    vals = np.asarray([math.nan if v is None else float(v) for v in iou.values()], dtype=np.float64)
    fig, ax = _figure(max(6.4, 0.32 * len(names) + 1.5), 4.2)
    xs = np.arange(len(names))
    ax.bar(xs, np.nan_to_num(100 * vals), color="tab:blue")
    for x, v in zip(xs, vals, strict=True):
        if not np.isfinite(v):
            ax.text(x, 1.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=90, fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, axis="y", alpha=0.3)
    finite = vals[np.isfinite(vals)]
    mean = f"mIoU {100 * finite.mean():.1f}%" if finite.size else "mIoU n/a"
    ax.set_title(f"{title} — {mean}" if title else mean)
    return _save(fig, out_png)
