"""SBD → `SegmentationClassAug` conversion (VOC 2012 + SBD, the `train_aug` split of 10,582 images).

Reads the Semantic Boundaries Dataset (Hariharan et al., `benchmark_RELEASE/dataset`):
`cls/<name>.mat` holds a struct `GTcls` whose field `Segmentation` is the uint8 class map
(0 = background, 1..20 VOC classes, no void), and `train.txt`/`val.txt` list its splits.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wsss import io as wio
from wsss.data.voc import SPLIT_DIR, _progress, read_name_list

NUM_VOC_CLASSES = 20
AUG_MASK_DIR = "SegmentationClassAug"


def _sbd_dataset_dir(sbd_root: Path) -> Path:
    """`sbd_root/dataset` (SBD's `benchmark_RELEASE` layout) or `sbd_root` if it holds `cls/`."""
    if (sbd_root / "dataset" / "cls").is_dir():
        return sbd_root / "dataset"
    if (sbd_root / "cls").is_dir():
        return sbd_root
    raise wio.DataError(
        f"SBD class folder not found: {sbd_root / 'dataset' / 'cls'} (expected the SBD "
        "benchmark_RELEASE folder holding dataset/cls/*.mat, dataset/train.txt, dataset/val.txt)"
    )


def read_sbd_mask(path: str | Path) -> np.ndarray:
    """Read the class map of an SBD `cls/<name>.mat` file.

    Returns:
        uint8 (H, W) with 0 = background and 1..20 VOC classes.

    Raises:
        DataError: missing or unreadable file, no `GTcls.Segmentation`, or values above 20.
    """
    from scipy.io import loadmat  # lazy: scipy is only needed for the conversion

    path = Path(path)
    if not path.is_file():
        raise wio.DataError(f"SBD annotation not found: {path}")
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:
        raise wio.DataError(f"{path}: unreadable .mat file ({exc})") from exc
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise wio.DataError(f"{path}: no GTcls.Segmentation struct field (not an SBD cls file?)")
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise wio.DataError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected (H, W)")
    if seg.size and (seg.min() < 0 or seg.max() > NUM_VOC_CLASSES):
        raise wio.DataError(
            f"{path}: class values {np.unique(seg).tolist()} outside 0..{NUM_VOC_CLASSES}"
        )
    return seg.astype(np.uint8)


def convert_sbd(
    sbd_root: str | Path,
    voc_root: str | Path,
    *,
    progress: bool = True,
    overwrite: bool = True,
) -> dict:
    """Build `voc_root/SegmentationClassAug` and `train_aug.txt` from SBD and VOC 2012.

    - Masks for the names in VOC `train` and `val` are copied byte for byte from
      `voc_root/SegmentationClass` (VOC's own annotation wins where SBD has the same image, as in
      the standard SegmentationClassAug).
    - Every other name in SBD `train` ∪ `val` is converted from `cls/<name>.mat` into a palette
      PNG (`wsss.io.save_mask`).
    - `voc_root/ImageSets/Segmentation/train_aug.txt` = (VOC train ∪ SBD train ∪ SBD val) − VOC
      val, sorted, one name per line.
    All writes are atomic.

    Args:
        sbd_root: SBD's `benchmark_RELEASE` folder (or its `dataset` subfolder).
        voc_root: VOC 2012 root (`VOCdevkit/VOC2012`) with `SegmentationClass/` and
            `ImageSets/Segmentation/{train,val}.txt`.
        progress: show a tqdm progress bar.
        overwrite: rewrite masks that already exist (False resumes an interrupted run).

    Returns:
        dict with `num_train_aug`, `num_copied` (VOC masks), `num_converted` (SBD masks),
        `num_skipped` (existing, with overwrite=False), `mask_dir` and `train_aug` (paths).

    Raises:
        DataError: naming the missing list, folder, mask or .mat file.
    """
    sbd_root, voc_root = Path(sbd_root), Path(voc_root)
    sbd_dir = _sbd_dataset_dir(sbd_root)
    sbd_train = read_name_list(sbd_dir / "train.txt")
    sbd_val = read_name_list(sbd_dir / "val.txt")
    voc_lists = voc_root / SPLIT_DIR
    voc_train = read_name_list(voc_lists / "train.txt")
    voc_val = read_name_list(voc_lists / "val.txt")
    voc_mask_dir = voc_root / "SegmentationClass"
    if not voc_mask_dir.is_dir():
        raise wio.DataError(f"VOC mask folder not found: {voc_mask_dir}")

    voc_names = set(voc_train) | set(voc_val)
    train_aug = sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))
    sbd_only = sorted((set(sbd_train) | set(sbd_val)) - voc_names)

    # Check every source exists before writing anything.
    missing = [voc_mask_dir / f"{n}.png" for n in sorted(voc_names)
               if not (voc_mask_dir / f"{n}.png").is_file()]
    missing += [sbd_dir / "cls" / f"{n}.mat" for n in sbd_only
                if not (sbd_dir / "cls" / f"{n}.mat").is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise wio.DataError(f"{len(missing)} source annotation(s) missing: {shown}{more}")

    out_dir = voc_root / AUG_MASK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    wio.remove_temporaries(out_dir)

    jobs = [("copy", n) for n in sorted(voc_names)] + [("mat", n) for n in sbd_only]

    def run(job: tuple[str, str]) -> str:
        kind, name = job
        target = out_dir / f"{name}.png"
        if not overwrite and target.is_file():
            return "skipped"
        if kind == "copy":
            source = voc_mask_dir / f"{name}.png"
            with source.open("rb") as src, wio.atomic_write(target) as dst:
                shutil.copyfileobj(src, dst)
            return "copied"
        wio.save_mask(target, read_sbd_mask(sbd_dir / "cls" / f"{name}.mat"))
        return "converted"

    counts = {"copied": 0, "converted": 0, "skipped": 0}
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for outcome in _progress(pool.map(run, jobs), total=len(jobs), desc="SBD → PNG",
                                 enabled=progress):
            counts[outcome] += 1

    list_path = voc_lists / "train_aug.txt"
    wio.write_text(list_path, "".join(f"{n}\n" for n in train_aug))
    return {
        "num_train_aug": len(train_aug),
        "num_copied": counts["copied"],
        "num_converted": counts["converted"],
        "num_skipped": counts["skipped"],
        "mask_dir": str(out_dir),
        "train_aug": str(list_path),
    }


__all__ = ["AUG_MASK_DIR", "convert_sbd", "read_sbd_mask"]
