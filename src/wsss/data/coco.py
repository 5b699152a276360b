"""MS COCO instance annotations → VOC-layout semantic masks and image-level labels.

Output layout under `out_root` (images stay in the COCO folders; point the dataset at them with
`image_dir=("<coco_root>/train2014", "<coco_root>/val2014")`)::

    out_root/SegmentationClass/<image stem>.png        palette PNG, 0 = background, 1..80
    out_root/ImageSets/Segmentation/<train|val>.txt    image stems, e.g. COCO_train2014_000000000009
    out_root/classes.txt                               `COCO_CLASSES`, background first
    out_root/labels.csv                                `name,class1;class2` image-level labels

Rasterisation (deterministic): every annotation of an image, crowd regions included, is decoded
with pycocotools `annToMask` (polygons and RLE) and painted with its contiguous class index
(`COCO_ID_TO_INDEX`: the 80 category ids 1..90 with gaps → 1..80) in *decreasing area order*
(ties by annotation id), so smaller objects are painted last and stay on top of larger ones.
Crowd regions are painted as their class, as ICAM/HFPL `process_coco.py` does (no 255 ignore).
Image-level labels are the classes of all annotations of the image (crowd included), so a class
whose pixels are fully covered by smaller objects still appears in `labels.csv`; images without
annotations get an all-background mask and an empty label field. Rows of `labels.csv` for
images of splits not converted by this call are kept. `SegmentationDataset` on
`out_root` picks up `classes.txt` and `labels.csv` automatically.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wsss import io as wio
from wsss.data.labels import COCO_CLASSES, COCO_ID_TO_INDEX
from wsss.data.voc import SPLIT_DIR, _progress

MASK_DIR = "SegmentationClass"
LABELS_FILE = "labels.csv"


def _split_list_name(split: str, splits: tuple[str, ...]) -> str:
    """`train2014` → `train` (trailing year removed) unless two requested splits would collide."""
    short = re.sub(r"\d+$", "", split) or split
    clashes = [s for s in splits if (re.sub(r"\d+$", "", s) or s) == short]
    return short if len(clashes) == 1 else split


def rasterize_annotations(
    coco, image_info: dict, ann_file: Path | str = ""
) -> tuple[np.ndarray, list[int]]:
    """Semantic mask and present classes of one COCO image.

    Args:
        coco: a `pycocotools.coco.COCO` object.
        image_info: its `imgs[id]` entry (`id`, `height`, `width`, `file_name`).
        ann_file: annotation file, for error messages.

    Returns:
        mask uint8 (height, width) with 0 = background and contiguous indices 1..80, painted in
        decreasing area order (smaller objects on top); sorted class indices of all annotations.

    Raises:
        DataError: an annotation has a category id outside the 80 COCO categories.
    """
    height, width = int(image_info["height"]), int(image_info["width"])
    mask = np.zeros((height, width), dtype=np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_info["id"]], iscrowd=None))
    painted: list[tuple[float, int, int, np.ndarray]] = []
    classes: set[int] = set()
    for ann in anns:
        cat = int(ann["category_id"])
        if cat not in COCO_ID_TO_INDEX:
            raise wio.DataError(
                f"{ann_file}: annotation {ann.get('id')} of image {image_info['file_name']} has "
                f"category id {cat}, not one of the 80 COCO categories"
            )
        index = COCO_ID_TO_INDEX[cat]
        classes.add(index)
        binary = coco.annToMask(ann)
        area = float(ann["area"]) if "area" in ann else float(binary.sum())
        painted.append((area, int(ann.get("id", 0)), index, binary))
    painted.sort(key=lambda item: (-item[0], item[1]))
    for _, _, index, binary in painted:
        mask[binary > 0] = index
    return mask, sorted(classes)


def convert_coco(
    coco_root: str | Path,
    out_root: str | Path,
    *,
    splits: tuple[str, ...] | list[str] = ("train2014", "val2014"),
    progress: bool = True,
    limit: int | None = None,
    overwrite: bool = True,
) -> dict:
    """Convert COCO instance annotations into the VOC layout (see the module docstring).

    Args:
        coco_root: folder holding `annotations/instances_<split>.json` (and the image folders).
        out_root: output root (created).
        splits: COCO splits; each writes `ImageSets/Segmentation/<train|val>.txt` (the year is
            dropped unless two splits would share a list name, e.g. train2014 and train2017).
        progress: show tqdm progress bars.
        limit: convert only the first `limit` images of each split (sorted by image id).
        overwrite: rewrite masks that already exist (False resumes an interrupted run).

    Returns:
        dict with `splits` (list name → number of images), `num_images`, `num_empty` (images
        without annotations), `num_skipped`, and the paths `out_root`, `labels_file`.

    Raises:
        DataError: missing or unreadable annotation file, unknown category id.
    """
    coco_root, out_root = Path(coco_root), Path(out_root)
    splits = tuple(splits)
    ann_files = {s: coco_root / "annotations" / f"instances_{s}.json" for s in splits}
    for split, ann_file in ann_files.items():
        if not ann_file.is_file():
            raise wio.DataError(f"COCO annotation file not found: {ann_file} (split {split})")
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:  # pragma: no cover - pycocotools is a dependency
        raise ImportError("convert_coco needs pycocotools: pip install pycocotools") from exc

    mask_dir = out_root / MASK_DIR
    mask_dir.mkdir(parents=True, exist_ok=True)
    wio.remove_temporaries(mask_dir)
    wio.write_text(out_root / "classes.txt", "".join(f"{c}\n" for c in COCO_CLASSES))

    label_rows: list[tuple[str, list[int]]] = []
    split_counts: dict[str, int] = {}
    num_empty = num_skipped = 0
    workers = max(1, min(8, os.cpu_count() or 1))
    for split in splits:
        ann_file = ann_files[split]
        try:
            with contextlib.redirect_stdout(_io.StringIO()):  # COCO() prints progress
                coco = COCO(str(ann_file))
        except Exception as exc:
            raise wio.DataError(f"{ann_file}: unreadable COCO annotation file ({exc})") from exc
        image_ids = sorted(coco.getImgIds())
        if limit is not None:
            image_ids = image_ids[: int(limit)]

        def run(image_id: int, coco=coco, ann_file=ann_file) -> tuple[str, list[int], bool, bool]:
            info = coco.imgs[image_id]
            name = Path(info["file_name"]).stem
            target = mask_dir / f"{name}.png"
            if not overwrite and target.is_file():
                anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
                classes = set()
                for ann in anns:
                    cat = int(ann["category_id"])
                    if cat not in COCO_ID_TO_INDEX:
                        raise wio.DataError(
                            f"{ann_file}: annotation {ann.get('id')} has category id {cat}, "
                            "not one of the 80 COCO categories"
                        )
                    classes.add(COCO_ID_TO_INDEX[cat])
                return name, sorted(classes), not anns, True
            mask, classes = rasterize_annotations(coco, info, ann_file)
            wio.save_mask(target, mask)
            return name, classes, not classes, False

        names: list[str] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for name, classes, empty, skipped in _progress(
                pool.map(run, image_ids), total=len(image_ids), desc=f"COCO {split}",
                enabled=progress,
            ):
                names.append(name)
                label_rows.append((name, classes))
                num_empty += int(empty)
                num_skipped += int(skipped)
        list_name = _split_list_name(split, splits)
        wio.write_text(out_root / SPLIT_DIR / f"{list_name}.txt", "".join(f"{n}\n" for n in names))
        split_counts[list_name] = len(names)

    labels_path = out_root / LABELS_FILE
    rows = {name: ";".join(COCO_CLASSES[c] for c in classes) for name, classes in label_rows}
    kept: list[tuple[str, str]] = []
    if labels_path.is_file():  # keep rows of splits converted by an earlier call
        with labels_path.open(newline="") as handle:
            for row in csv.reader(handle):
                if row and row[0] != "name" and row[0] not in rows:
                    kept.append((row[0], row[1] if len(row) > 1 else ""))
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "labels"])
    for name, text in kept + list(rows.items()):
        writer.writerow([name, text])
    wio.write_text(labels_path, buffer.getvalue())
    return {
        "splits": split_counts,
        "num_images": len(label_rows),
        "num_empty": num_empty,
        "num_skipped": num_skipped,
        "out_root": str(out_root),
        "labels_file": str(labels_path),
    }


__all__ = ["LABELS_FILE", "MASK_DIR", "convert_coco", "rasterize_annotations"]
