"""Datasets (VOC layout readers, converters, synthetic generator) and paired transforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsss.config import DataConfig
from wsss.registry import Registry

DATASETS = Registry("dataset")


def _voc_layout(cfg: DataConfig, split: str, transform: Callable[..., Any] | None) -> Any:
    from wsss.data.voc import SegmentationDataset

    return SegmentationDataset(
        root=cfg.root,
        split=split,
        image_dir=list(cfg.image_dir),
        mask_dir=cfg.mask_dir,
        labels_from=cfg.labels_from,
        labels_file=cfg.labels_file,
        transform=transform,
        max_image_side=cfg.max_image_side,
    )


# All four read the VOC layout; they differ in defaults set by the presets (image folders,
# label files) and in what the `data` stage does when the root is empty (synthetic generates).
for _name in ("synthetic", "voc", "coco", "custom"):
    DATASETS.register(_name)(_voc_layout)


def build_dataset(cfg: DataConfig, split: str, *, transform: Callable[..., Any] | None = None) -> Any:
    """The dataset named by `cfg.dataset` for `split`."""
    return DATASETS.get(cfg.dataset)(cfg, split, transform)
