"""The report's gallery: per image, input | CAM heat maps | masks | ground truth, worst first.

Columns are found generically (`RunInfo.output_folders`): every folder of CAM files gives a
heat-map column and every folder of PNG masks a mask column, for each split (eval, then val) that
has outputs. Rows are ordered by the per-image mIoU of the split's last mask folder (lowest first;
images without labelled pixels last); pixels a mask leaves at 255 are abstained, not errors. A
split without ground-truth masks (image-level labels only) has no ground-truth column and keeps
the data set order; its captions name the image-level labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsss.io import DataError, load_cams, load_mask, write_bytes
from wsss.metrics.confusion import confusion_matrix, miou
from wsss.report.collect import OutputFolder, RunInfo
from wsss.report.render import cam_heatmap, colorize_mask, png_bytes, upscale

# Panels are stored at least this tall (48 px synthetic images are enlarged).
MIN_PANEL = 128
# Larger splits are ranked on an evenly spaced subset, keeping a report of COCO train (82k
# images) to seconds.
MAX_SCORED = 3000


@dataclass
class GalleryColumn:
    key: str  # file suffix, e.g. "cam-make_cam"
    title: str
    kind: str  # image | cams | masks | gt
    output: OutputFolder | None = None


@dataclass
class GalleryRow:
    name: str
    miou: float | None
    classes: list[str]
    files: dict[str, str]  # column key → path relative to the report folder


@dataclass
class Gallery:
    split: str
    order_stage: str | None  # the mask folder (label) whose per-image mIoU orders the rows
    columns: list[GalleryColumn]
    rows: list[GalleryRow]
    num_images: int  # images of the split with outputs (rows are the worst `max_images`)
    num_ranked: int = 0  # images scored for the order (all of them, up to MAX_SCORED)
    class_names: list[str] = field(default_factory=list)  # background first
    class_indices: set[int] = field(default_factory=set)  # classes visible in the panels
    ground_truth: bool = True  # the split has masks (a ground-truth column, rows ranked)


def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float | None:
    """mIoU of one mask (H, W) against its ground truth over classes present in either;
    predicted 255 is abstained, ground-truth 255 ignored. None without labelled pixels."""
    value = float(miou(confusion_matrix(pred, gt, num_classes)))
    return None if math.isnan(value) else value


def _stems(folder: Path, suffix: str) -> set[str]:
    return {p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")} if folder.is_dir() else set()


def _splits(cfg: Any) -> list[str]:
    out = []
    for split in (cfg.data.eval_split, cfg.data.val_split):
        if split and split not in out:
            out.append(split)
    return out


def build_galleries(info: RunInfo, out_dir: Path, *, max_images: int = 24
                    ) -> tuple[list[Gallery], list[str]]:
    """Write the gallery panels under `out_dir/gallery/<split>/` and describe them.

    Args:
        info: the run (`read_run`).
        out_dir: the report folder; panel paths in the result are relative to it.
        max_images: rows per split (the worst ones).

    Returns:
        the galleries (one per split with outputs) and notes on what could not be shown.
    """
    from wsss.data import build_dataset

    notes: list[str] = []
    if info.cfg is None:
        return [], [f"no gallery: config.yaml does not load ({info.config_error})"]
    outputs = info.output_folders("cams") + info.output_folders("masks")
    if not outputs:
        return [], ["no gallery: no stage has written CAMs or masks yet"]
    stems = {o: _stems(info.run_dir / o.stage / o.folder, ".npz" if o.kind == "cams" else ".png")
             for o in outputs}
    galleries = []
    for split in _splits(info.cfg):
        try:
            dataset = build_dataset(info.cfg.data, split)
        except (DataError, FileNotFoundError, ValueError) as exc:
            notes.append(f"split {split}: data unavailable ({exc})")
            continue
        index = {n: i for i, n in enumerate(dataset.names)}
        here = [o for o in outputs if stems[o] & index.keys()]
        if not here:
            continue
        gallery = _build_one(info, dataset, split, index, here, stems, out_dir, max_images)
        galleries.append(gallery)
    return galleries, notes


def _path(info: RunInfo, output: OutputFolder, name: str) -> Path:
    suffix = ".npz" if output.kind == "cams" else ".png"
    return info.run_dir / output.stage / output.folder / f"{name}{suffix}"


def _build_one(info: RunInfo, dataset: Any, split: str, index: dict[str, int],
               here: list[OutputFolder], stems: dict[OutputFolder, set[str]], out_dir: Path,
               max_images: int) -> Gallery:
    num_classes = dataset.num_classes + 1
    columns = [GalleryColumn("image", "image", "image")]
    for kind, title in (("cams", "CAM"), ("masks", "mask")):
        columns += [GalleryColumn(f"{kind[:-1]}-{o.label.replace('/', '-')}",
                                  f"{title} · {o.label}", kind, o)
                    for o in here if o.kind == kind]
    if dataset.has_masks:
        columns.append(GalleryColumn("gt", "ground truth", "gt"))
    masks_here = [o for o in here if o.kind == "masks"]
    order = masks_here[-1] if masks_here and dataset.has_masks else None
    covered = set().union(*(stems[o] for o in here)) & index.keys()
    names = [n for n in dataset.names if n in covered]
    num_images = len(names)
    if num_images > MAX_SCORED:
        names = [names[int(i)] for i in np.linspace(0, num_images - 1, MAX_SCORED).round()]
    scores: dict[str, float | None] = {}
    if order is not None:
        for name in names:
            if name in stems[order]:
                pred = load_mask(_path(info, order, name))
                gt = dataset.load_mask(index[name])
                scores[name] = image_miou(pred, gt, num_classes) if pred.shape == gt.shape \
                    else None
    # Worst first; images without a score (no labelled pixel, or no mask) go last.
    names.sort(key=lambda n: (scores.get(n) is None, scores.get(n) or 0.0))
    chosen = names[:max_images]
    gallery = Gallery(split=split, order_stage=order.label if order else None, columns=columns,
                      rows=[], num_images=num_images, num_ranked=len(names),
                      class_names=list(dataset.class_names), ground_truth=dataset.has_masks)
    folder = Path("gallery") / split
    for position, name in enumerate(chosen):
        i = index[name]
        image = dataset.load_image(i)
        panels: dict[str, np.ndarray] = {"image": image}
        gt = dataset.load_mask(i)
        if gt is not None:
            gt_classes = {int(v) for v in np.unique(gt)}
            panels["gt"] = colorize_mask(gt)
        else:  # image-level labels only: the caption names them
            gt_classes = {int(c) + 1 for c in np.flatnonzero(dataset.label_vector(i))}
        present = set(gt_classes)
        files: dict[str, str] = {}
        for column in columns:
            if column.output is None or name not in stems[column.output]:
                continue
            if column.kind == "cams":
                panels[column.key] = cam_heatmap(image, *load_cams(_path(info, column.output,
                                                                         name)))
            else:
                mask = load_mask(_path(info, column.output, name))
                present |= {int(v) for v in np.unique(mask)}
                panels[column.key] = colorize_mask(mask)
        for key, rgb in panels.items():
            rel = folder / f"{position:03d}_{key}.png"
            write_bytes(out_dir / rel, png_bytes(upscale(rgb, MIN_PANEL)))
            files[key] = rel.as_posix()
        labels = [dataset.class_names[c] for c in sorted(gt_classes)
                  if 0 < c < len(dataset.class_names)]
        gallery.rows.append(GalleryRow(name=name, miou=scores.get(name), classes=labels,
                                       files=files))
        gallery.class_indices |= present
    return gallery
