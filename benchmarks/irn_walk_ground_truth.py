"""What IRN's random walk does with perfect input, for issue 22's diagnosis.

CAMs = the ground-truth masks at stride 4 (nearest), boundaries = the ground-truth class edges
(one cell wide) scaled to a peak value and optionally blurred; the walk, upsampling and the
background plane of `wsss.methods.irn.pseudo_mask` (β 10, t 256, radius 5, background 0.25),
scored against the full-resolution ground truth, on synthetic 160 px images.

    python benchmarks/irn_walk_ground_truth.py [--images 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from wsss.data.synthetic import SYNTHETIC_CLASSES, describe_scene, render_scene
from wsss.methods.irn import IrnConfig, pseudo_mask
from wsss.metrics.confusion import confusion_matrix, miou
from wsss.models.irn import stride4_size


class _FixedBoundary:
    """Stands in for IRNet: `boundary` returns the given map."""

    def __init__(self, boundary: torch.Tensor) -> None:
        self.map = boundary

    def boundary(self, images: torch.Tensor, size: tuple[int, int], *, pad_to: int
                 ) -> torch.Tensor:
        return self.map


def class_edges(labels: np.ndarray) -> np.ndarray:
    """1 where a cell's label differs from its lower or right neighbour, float32 like `labels`."""
    edge = np.zeros(labels.shape, dtype=np.float32)
    edge[:-1] += labels[:-1] != labels[1:]
    edge[:, :-1] += labels[:, :-1] != labels[:, 1:]
    return np.clip(edge, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    num_classes = len(SYNTHETIC_CLASSES)
    cfg = IrnConfig(num_steps=256, bg_threshold=0.25, cam_power=1.0, beta=10.0, radius=5,
                    boundary_pad=0)
    scenes = [render_scene(describe_scene(0, "train", i, image_size=160))
              for i in range(args.images)]
    print("| boundary | mIoU |\n|---|---|")
    rows = [("stride-4 input (no walk)", None, None)] + [
        (f"edges peak {peak}, blur σ {blur}", peak, blur)
        for peak in (1.0, 0.8, 0.6) for blur in (0.0, 0.7)]
    began = time.perf_counter()
    for label, peak, blur in rows:
        total = None
        for scene in scenes:
            truth = scene.mask.astype(np.int64)
            height, width = truth.shape
            size = stride4_size((height, width))
            low = truth[::4, ::4][: size[0], : size[1]]
            keys = np.array([c for c in np.unique(truth) if c not in (0, 255)], dtype=np.int64)
            cams = np.stack([low == c for c in keys]).astype(np.float32)
            if peak is None:
                pred = np.zeros_like(truth)
                up = np.kron(cams, np.ones((4, 4)))[:, :height, :width] > 0
                for k, c in enumerate(keys):
                    pred[up[k]] = c
            else:
                edge = class_edges(np.where(low == 255, 0, low))
                if blur:
                    edge = ndimage.gaussian_filter(edge, blur)
                    edge /= edge.max()
                model = _FixedBoundary(torch.from_numpy(edge * peak)[None])
                pred, _, _ = pseudo_mask(model, scene.image, np.zeros((len(keys), height, width),
                                         np.float32), keys, cams_strided=cams, cfg=cfg,
                                         device=torch.device("cpu"))
            conf = confusion_matrix(pred.astype(np.int64), truth, num_classes)
            total = conf if total is None else total + conf
        print(f"| {label} | {100 * float(miou(total)):.1f} |", flush=True)
    print(f"\n{args.images} images, {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
