"""Threshold sweep: `wsss.metrics.sweep.ThresholdSweep` (one pass over the CAMs) against
re-thresholding every image at every threshold, as IRN `step/eval_cam.py` does for one
threshold (pad a τ plane, argmax, map through the keys, accumulate a bincount confusion).

Default: 100 thresholds (0.00..0.99) over 1,000 images of 60x80 pixels with 1-3 classes each
(21 classes), the 100 confusion matrices must be identical. Usage:

    python benchmarks/bench_sweep.py [--images 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, compare, format_table, header  # noqa: E402

from wsss.metrics.sweep import ThresholdSweep, default_thresholds  # noqa: E402

NUM_CLASSES = 21


def make_inputs(num_images: int, size=(60, 80), seed: int = 0):
    """Per image: CAMs (K, H, W) float32 in [0, 1], keys (K,), a ground truth with 255 pixels."""
    rng = np.random.default_rng(seed)
    items = []
    h, w = size
    for _ in range(num_images):
        k = int(rng.integers(1, 4))
        keys = np.sort(rng.choice(np.arange(1, NUM_CLASSES), k, replace=False)).astype(np.int64)
        coarse = rng.random((k, h // 10, w // 10)).astype(np.float32)
        cams = coarse.repeat(10, 1).repeat(10, 2) * rng.uniform(0.8, 1.0, (k, h, w))
        cams = (cams / cams.max()).astype(np.float32)
        gt = np.where(cams.max(0) > rng.uniform(0.2, 0.6), keys[cams.argmax(0)], 0)
        gt[rng.random((h, w)) < 0.05] = 255
        items.append((cams, keys, gt.astype(np.int64)))
    return items


def sweep_reference(items, thresholds) -> np.ndarray:
    """(T, N, N): for each threshold, each image thresholded and counted again."""
    n = NUM_CLASSES
    out = np.zeros((len(thresholds), n, n), dtype=np.int64)
    for t, tau in enumerate(thresholds):
        conf = np.zeros(n * n, dtype=np.int64)
        for cams, keys, gt in items:
            scores = np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=tau)
            pred = np.pad(keys, (1, 0))[np.argmax(scores, axis=0)]
            valid = gt != 255
            conf += np.bincount(n * gt[valid] + pred[valid], minlength=n * n)
        out[t] = conf.reshape(n, n)
    return out


def sweep_ours(items, thresholds) -> np.ndarray:
    sweep = ThresholdSweep(NUM_CLASSES, thresholds)
    for cams, keys, gt in items:
        sweep.update(cams, keys, gt)
    return sweep.stack[:, :, :NUM_CLASSES].numpy()


def run(repeats: int = 3, num_images: int = 1000) -> list[Row]:
    items = make_inputs(num_images)
    thresholds = default_thresholds()
    ours, ref, ratio = compare(lambda: sweep_ours(items, thresholds),
                               lambda: sweep_reference(items, thresholds),
                               repeats=repeats, ref_repeats=1)
    same = np.array_equal(ours.result, ref.result)
    assert same, "confusion stacks differ"
    return [Row(f"sweep {len(thresholds)} thr x {num_images} masks", ours.seconds, ref.seconds,
                ">= 10x", ratio >= 10, ours.peak_mb, ref.peak_mb,
                "100 confusion matrices identical", ratio_value=ratio)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    print(header("threshold sweep"))
    print(format_table(run(args.repeats, args.images)))


if __name__ == "__main__":
    main()
