"""Measured per-image costs of pseudo-mask generation at VOC size, and a COCO throughput estimate.

Runs on synthetic inputs of the real sizes (a 375x500 image, 2 classes present) with the paper
networks (ResNet-50 CAMs at scales 1.0/0.5/1.5/2.0 + flip, IRN random walk with t = 256) and
the IRN seed CRF, then extrapolates to COCO 2014 train (82,783 images) for a number of
processes. Usage:

    python benchmarks/per_image_costs.py [--device cpu|cuda] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wsss.config import load_config
from wsss.methods import build_method
from wsss.ops.cam import seeds_from_cams
from wsss.ops.random_walk import random_walk

COCO_TRAIN = 82_783


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    # A piecewise-flat image with mild noise: the CRF's lattice cost depends on the colours, and
    # uniform noise (every pixel a new colour) would make it far slower than on photographs.
    blocks = rng.integers(0, 256, (12, 16, 3)).repeat(32, axis=0).repeat(32, axis=1)[:375, :500]
    image = np.clip(blocks + rng.normal(0, 8, blocks.shape), 0, 255).astype(np.uint8)
    labels = np.zeros(20, dtype=np.float32)
    labels[[4, 14]] = 1

    cfg = load_config("configs/voc/cam_baseline.yaml", ["model.pretrained=none"])
    method = build_method(cfg)
    model = method.build_model(20).to(device).eval()
    with torch.inference_mode():
        cam_s = _time(lambda: method.infer_cams(model, image, labels), args.repeats)
        cams, keys = method.infer_cams(model, image, labels)
    crf_s = _time(lambda: seeds_from_cams(image, cams, keys), args.repeats)
    low = torch.rand(2, 94, 125, device=device)
    boundary = torch.rand(94, 125, device=device) * 0.2
    walk_s = _time(lambda: random_walk(low, boundary, num_steps=256), args.repeats)

    rows = [("CAMs: ResNet-50, 4 scales + flip", cam_s), ("seeds: 2 label CRFs", crf_s),
            ("random walk: 94x125, t = 256", walk_s)]
    total = sum(s for _, s in rows)
    print(f"device {device}, torch threads {torch.get_num_threads()}, image 375x500")
    for name, seconds in rows:
        print(f"  {name:<36}{seconds:8.2f} s/image")
    print(f"  {'total':<36}{total:8.2f} s/image")
    print(f"COCO 2014 train ({COCO_TRAIN:,} images), sharded over N processes:")
    for n in (1, 8, 32):
        print(f"  N = {n:>2}: {COCO_TRAIN * total / n / 3600:8.1f} h")


if __name__ == "__main__":
    main()
