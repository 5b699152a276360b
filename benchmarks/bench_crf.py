"""Dense CRF over a set of images: `wsss.ops.crf.dense_crf_batch` with 2 worker processes
against 1 (the official scripts run one image after the other in one process).

Inputs: 8 VOC-sized (375x500) piecewise-flat images with 4-label score stacks (background +
3 classes), the PSA/1-Stage preset (10 iterations). The outputs of both runs must be identical.
Usage:

    python benchmarks/bench_crf.py [--images 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, compare, format_table, header  # noqa: E402

from wsss.ops.crf import CRF_PRESETS, dense_crf_batch  # noqa: E402


def make_inputs(num_images: int, size=(375, 500), num_labels: int = 4, seed: int = 0):
    """Images with blocky colours and mild noise (uniform noise would make the permutohedral
    lattice far larger than on photographs) and score maps following the blocks, noisily."""
    rng = np.random.default_rng(seed)
    h, w = size
    images, probs = [], []
    for _ in range(num_images):
        blocks = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3))
        img = blocks.repeat(32, 0).repeat(32, 1)[:h, :w] + rng.normal(0, 8, (h, w, 3))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        labels = rng.integers(0, num_labels, (h // 32 + 1, w // 32 + 1)).repeat(32, 0)
        labels = labels.repeat(32, 1)[:h, :w]
        scores = rng.random((num_labels, h, w)) * 0.6
        scores[labels, np.arange(h)[:, None], np.arange(w)[None]] += 0.5
        probs.append((scores / scores.sum(0)).astype(np.float32))
    return images, probs


def run(repeats: int = 3, num_images: int = 8) -> list[Row]:
    images, probs = make_inputs(num_images)
    preset = CRF_PRESETS["psa"]
    ours, ref, ratio = compare(lambda: dense_crf_batch(images, probs, workers=2, **preset),
                               lambda: dense_crf_batch(images, probs, workers=1, **preset),
                               repeats=repeats)
    same = all(np.array_equal(a, b) for a, b in zip(ours.result, ref.result, strict=True))
    assert same, "2-worker CRF output differs from 1 worker"
    return [Row(f"dense CRF {num_images} x 375x500, 2 vs 1 worker", ours.seconds, ref.seconds,
                ">= 1.7x", ratio >= 1.7, ours.peak_mb, ref.peak_mb, "posteriors identical",
                note="peak: parent process only", ratio_value=ratio)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    print(header("dense CRF"))
    print(format_table(run(args.repeats, args.images)))


if __name__ == "__main__":
    main()
