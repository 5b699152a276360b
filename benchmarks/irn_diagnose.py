"""What IRN's random walk does on a trained run, for issue 22's diagnosis.

Loads a finished AMN (or CAM baseline + IRN) run's IRNet and CAM files and scores, on the run's
evaluation split:
  - the boundary map on its own: mean boundary value on ground-truth class edges (stride 4,
    one-cell tolerance) and elsewhere, and the best F-measure of the thresholded map;
  - the walk from the run's CAMs with its own settings, then one setting changed at a time
    (β, t, background threshold, CAM power, inference padding);
  - the walk from ground-truth CAMs with the trained boundary map (what the walk does with
    perfect seeds and real boundaries), and from the run's CAMs with ground-truth edges;
  - for reference the stride-4 CAMs without a walk (argmax over the background plane).

    python benchmarks/irn_diagnose.py RUN_DIR [--images 100] [--cam-stage make_amn_cam]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from wsss.config import load_config, select
from wsss.data import build_dataset
from wsss.data.transforms import normalize_image
from wsss.engine.checkpoint import load_checkpoint, load_model_state
from wsss.methods.irn import IrnConfig, build_irnet, pseudo_mask
from wsss.metrics.confusion import confusion_matrix, miou
from wsss.models.irn import stride4_size

# the stand-in boundary model and the ground-truth edges of the perfect-input benchmark
from irn_walk_ground_truth import _FixedBoundary, class_edges  # noqa: E402  (benchmarks/)


def best_f(values: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Best F-measure over thresholds of `values` against boolean `truth` (one-cell tolerance
    both ways, as boundary benchmarks allow), and its threshold."""
    near_truth = ndimage.binary_dilation(truth)
    best = (0.0, 0.0)
    for t in np.linspace(0.05, 0.95, 19):
        pred = values > t
        if not pred.any():
            continue
        precision = (pred & near_truth).sum() / pred.sum()
        recall = (truth & ndimage.binary_dilation(pred)).sum() / max(truth.sum(), 1)
        f = 2 * precision * recall / max(precision + recall, 1e-9)
        best = max(best, (float(f), float(t)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--cam-stage", default="make_amn_cam")
    parser.add_argument("--irn-stage", default="train_irn")
    parser.add_argument("--config-key", default="method.irn")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    cfg = load_config(args.run_dir / "config.yaml")
    base: IrnConfig = select(cfg, args.config_key)
    dataset = build_dataset(cfg.data, cfg.data.eval_split)
    num_classes = len(dataset.class_names)
    model = build_irnet(cfg, load_pretrained=False)
    path = args.run_dir / args.irn_stage / "model.pt"
    load_model_state(model, load_checkpoint(path, map_location="cpu")["model"], str(path))
    model.eval()
    device = torch.device("cpu")
    variants = {"run settings": base}
    for field, values in (("beta", (5.0, 20.0)), ("num_steps", (16, 64, 1024)),
                          ("bg_threshold", (0.15, 0.35, 0.45)), ("cam_power", (1.0, 2.0)),
                          ("boundary_pad", (0 if base.boundary_pad else 512,))):
        for value in values:
            variants[f"{field} {value}"] = dataclasses.replace(base, **{field: value})
    totals: dict[str, np.ndarray] = {}
    edge_on, edge_off, f_scores = [], [], []

    def add(label: str, pred: np.ndarray, truth: np.ndarray) -> None:
        conf = confusion_matrix(pred.astype(np.int64), truth, num_classes)
        totals[label] = totals[label] + conf if label in totals else conf

    began = time.perf_counter()
    n = min(args.images, len(dataset))
    for i in range(n):
        name = dataset.names[i]
        image = dataset.load_image(i)
        truth = dataset.load_mask(i).astype(np.int64)
        cam_file = args.run_dir / args.cam_stage / "cams" / f"{name}.npz"
        with np.load(cam_file) as data:
            cams, keys = data["cams"].astype(np.float32), data["keys"].astype(np.int64)
            strided = data["cams_strided"].astype(np.float32) if "cams_strided" in data else None
        height, width = truth.shape
        size = stride4_size((height, width))
        # the trained boundary map once per canvas (every walk below reuses it), scored on its
        # own at stride 4 against the ground-truth class edges
        boundaries = {pad: _FixedBoundary(model.boundary(normalize_image(image)[None], size,
                                                         pad_to=pad))
                      for pad in {v.boundary_pad for v in variants.values()}}
        trained = boundaries[base.boundary_pad]
        bmap = trained.map.numpy()
        low_truth = truth[::4, ::4][: size[0], : size[1]]
        edges = class_edges(np.where(low_truth == 255, 0, low_truth)) > 0
        near = ndimage.binary_dilation(edges)
        edge_on.append(bmap[near].mean() if near.any() else np.nan)
        edge_off.append(bmap[~near].mean())
        f_scores.append(best_f(bmap, edges)[0])
        # walks from the run's CAMs
        for label, variant in variants.items():
            pred, _, _ = pseudo_mask(boundaries[variant.boundary_pad], image, cams, keys,
                                     cams_strided=strided, cfg=variant, device=device)
            add(label, pred, truth)
        # no walk: the stride-4 CAMs upsampled against the background plane
        fg = keys > 0
        low = torch.from_numpy(strided[fg] if strided is not None else cams[fg])
        low = low.clamp_min(0).pow(base.cam_power)[None]
        up = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[0]
        up = up / up.max().clamp_min(1e-5)
        plane = torch.full((1, height, width), base.bg_threshold)
        pred = np.concatenate([[0], keys[fg]])[torch.cat([plane, up]).argmax(0).numpy()]
        add("no walk (stride-4 CAMs, same background plane)", pred, truth)
        # perfect seeds: ground-truth CAMs at stride 4 with the trained boundary map
        gt_keys = np.array([c for c in np.unique(truth) if c not in (0, 255)], dtype=np.int64)
        if gt_keys.size:
            gt_cams = np.stack([low_truth == c for c in gt_keys]).astype(np.float32)
            pred, _, _ = pseudo_mask(trained, image, np.zeros((len(gt_keys), height, width),
                                     np.float32), gt_keys, cams_strided=gt_cams, cfg=base,
                                     device=device)
            add("ground-truth CAMs, trained boundaries", pred, truth)
        # perfect boundaries: the run's CAMs walked inside ground-truth edges (peak 0.8)
        fixed = _FixedBoundary(torch.from_numpy(edges.astype(np.float32) * 0.8))
        pred, _, _ = pseudo_mask(fixed, image, cams, keys, cams_strided=strided, cfg=base,
                                 device=device)
        add("run's CAMs, ground-truth edges (0.8)", pred, truth)
    print(f"boundary map (stride 4, {n} images): mean {np.nanmean(edge_on):.3f} within one cell "
          f"of a ground-truth class edge, {np.mean(edge_off):.3f} elsewhere; best F "
          f"{np.mean(f_scores):.3f}")
    print("\n| walk | mIoU |\n|---|---|")
    for label, conf in totals.items():
        print(f"| {label} | {100 * float(miou(conf)):.1f} |")
    print(f"\n{n} images of {cfg.data.eval_split}, {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
