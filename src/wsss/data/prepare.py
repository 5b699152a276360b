"""The `data` stage: create the synthetic set where asked, then validate every split.

A synthetic set is generated only at a root the user did not type: the root a preset (or the
default config) names, or any root with `pipeline.generate_data=true`. A `data.root` given on the
command line that holds no data is an error naming it, so a typo never trains on generated data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from wsss.config import DataConfig
from wsss.io import DataError

log = logging.getLogger("wsss")


def ensure_synthetic(cfg: DataConfig, *, generate: bool = True) -> None:
    """Generate the synthetic set at `cfg.root` unless data is already there.

    Args:
        generate: whether generating at this root was asked for; false makes an empty or
            missing root an error.

    Raises:
        DataError: the root holds a synthetic set made with other generator parameters, or it
            holds no data and `generate` is false.
    """
    from wsss.data.synthetic import generate as generate_synthetic

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
    if not generate:
        state = ("does not exist" if not root.is_dir() else "is empty" if not any(root.iterdir())
                 else "holds an unfinished synthetic set (no meta.json)")
        raise DataError(
            f"data.root: {root} {state}; synthetic data is generated only at the root a preset "
            f"names. Check the path, or create a synthetic set there with `wsss synth --out "
            f"{root}` (or --set pipeline.generate_data=true)"
        )
    log.info("generating synthetic data at %s (%s)", root, wanted)
    generate_synthetic(root, **wanted)


def _interrupted_generation(root: Path) -> bool:
    """True for a root where `generate` was killed: its folders and only its own image names,
    but no meta.json (written last). Generating again overwrites the same files."""
    images = root / "JPEGImages"
    return ((root / "SaliencyMaps").is_dir() and images.is_dir()
            and all(p.name.startswith(("syn_", ".tmp-")) for p in images.iterdir()))


def data_kind(cfg: DataConfig) -> str:
    """What the root holds: "synthetic" for a set `wsss synth` made (it has meta.json), else the
    configured data set, with "voc-layout" for a user's own folder under a synthetic preset."""
    if (Path(cfg.root) / "meta.json").is_file():
        return "synthetic"
    return "voc-layout" if cfg.dataset == "synthetic" else cfg.dataset


def label_source_text(labels: dict[str, Any]) -> str:
    """A short phrase for a data summary's `labels`: "masks", "CSV <file>", "cls_labels <file>"."""
    source = labels.get("source")
    if source == "masks":
        return "masks (foreground classes present in each ground-truth mask)"
    name = "CSV" if source == "csv" else str(source)
    return f"{name} {labels.get('file')}" if labels.get("file") else name


def prepare_data(cfg: DataConfig, *, generate: bool = True) -> dict[str, Any]:
    """Generate (synthetic, where asked) and validate every split the run reads.

    Args:
        generate: whether a synthetic set may be generated at `cfg.root` (see the module doc).

    Returns:
        a summary: root, what it holds (`kind`), where the image-level labels come from
        (`labels`: source masks / csv / cls_labels and file), class names, and per split the
        number of images, whether it has ground-truth masks, and images without a foreground
        label.
    """
    from wsss.data import build_dataset

    if cfg.dataset == "synthetic":
        ensure_synthetic(cfg, generate=generate)
    if not Path(cfg.root).is_dir():
        raise DataError(f"data.root: dataset root not found: {cfg.root}")
    summary: dict[str, Any] = {"root": str(cfg.root), "kind": data_kind(cfg), "splits": {}}
    for split in dict.fromkeys((cfg.train_split, cfg.infer_split, cfg.eval_split, cfg.val_split)):
        dataset = build_dataset(cfg, split)
        report = dataset.validate(check_masks=dataset.has_masks, progress=True)
        summary["splits"][split] = {"images": len(dataset), "has_masks": dataset.has_masks,
                                    "no_foreground": list(report.no_foreground)}
        summary["class_names"] = list(dataset.class_names)
        summary["labels"] = {"source": dataset.label_source,
                             "file": str(dataset.labels_file) if dataset.labels_file else None}
        if report.no_foreground:
            log.warning("%s: %d images have no foreground label (e.g. %s)", split,
                        len(report.no_foreground), report.no_foreground[:3])
    without = [s for s, v in summary["splits"].items() if not v["has_masks"]]
    log.info("data: %s at %s; image-level labels from %s; %s", summary["kind"], cfg.root,
             label_source_text(summary["labels"]),
             f"no ground-truth masks for split(s) {', '.join(without)} (their scoring stages "
             "are skipped)" if without else "ground-truth masks for every split")
    return summary
