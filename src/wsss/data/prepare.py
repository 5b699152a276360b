"""The `data` stage: create the synthetic set when its root is empty, then validate every split."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from wsss.config import DataConfig
from wsss.io import DataError

log = logging.getLogger("wsss")


def ensure_synthetic(cfg: DataConfig) -> None:
    """Generate the synthetic set at `cfg.root` unless data is already there.

    Raises:
        DataError: the root holds a synthetic set made with other generator parameters.
    """
    from wsss.data.synthetic import generate

    root = Path(cfg.root)
    s = cfg.synthetic
    wanted = {"num_train": s.num_train, "num_val": s.num_val, "image_size": s.image_size,
              "seed": s.seed}
    meta_path = root / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        found = {k: meta.get("parameters", {}).get(k) for k in wanted}
        if found != wanted:
            raise DataError(
                f"{meta_path}: synthetic data made with {found}, config asks for {wanted} "
                f"(data.synthetic.*); choose another data.root or delete {root}"
            )
        return
    if root.is_dir() and any(root.iterdir()) and not _interrupted_generation(root):
        return  # a user's own VOC-layout data under a synthetic preset
    log.info("generating synthetic data at %s (%s)", root, wanted)
    generate(root, **wanted)


def _interrupted_generation(root: Path) -> bool:
    """True for a root where `generate` was killed: its folders and only its own image names,
    but no meta.json (written last). Generating again overwrites the same files."""
    images = root / "JPEGImages"
    return ((root / "SaliencyMaps").is_dir() and images.is_dir()
            and all(p.name.startswith(("syn_", ".tmp-")) for p in images.iterdir()))


def prepare_data(cfg: DataConfig) -> dict[str, Any]:
    """Generate (synthetic, when needed) and validate every split the run reads.

    Returns:
        a summary: class names, images per split, images without a foreground label.
    """
    from wsss.data import build_dataset

    if cfg.dataset == "synthetic":
        ensure_synthetic(cfg)
    if not Path(cfg.root).is_dir():
        raise DataError(f"data.root: dataset root not found: {cfg.root}")
    summary: dict[str, Any] = {"root": str(cfg.root), "splits": {}}
    for split in dict.fromkeys((cfg.train_split, cfg.infer_split, cfg.eval_split, cfg.val_split)):
        dataset = build_dataset(cfg, split)
        report = dataset.validate(check_masks=dataset.has_masks, progress=True)
        summary["splits"][split] = {"images": len(dataset), "has_masks": dataset.has_masks,
                                    "no_foreground": list(report.no_foreground)}
        summary["class_names"] = list(dataset.class_names)
        if report.no_foreground:
            log.warning("%s: %d images have no foreground label (e.g. %s)", split,
                        len(report.no_foreground), report.no_foreground[:3])
    return summary
