"""SBD and COCO converters on tiny fixtures written into tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from wsss.data.coco import convert_coco
from wsss.data.labels import COCO_CLASSES, COCO_ID_TO_INDEX
from wsss.data.sbd import convert_sbd, read_sbd_mask
from wsss.data.voc import SegmentationDataset
from wsss.io import DataError, load_mask, save_mask

# ---------------------------------------------------------------------------------------------
# SBD
# ---------------------------------------------------------------------------------------------

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033"]
SBD_TRAIN = ["2007_000039", "2008_000002"]  # 2007_000039 is also in VOC train
SBD_VAL = ["2007_000033", "2008_000003"]  # 2007_000033 is VOC val → not in train_aug


def _write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """SBD's layout: struct GTcls with Segmentation, Boundaries (cell) and CategoriesPresent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros((2, 2), np.uint8)
    present = np.unique(seg[seg > 0]).astype(np.uint8)
    savemat(path, {"GTcls": {"Segmentation": seg.astype(np.uint8), "Boundaries": boundaries,
                             "CategoriesPresent": present}})


def make_voc_sbd(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    voc, sbd = tmp_path / "VOC2012", tmp_path / "benchmark_RELEASE"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (sbd / "dataset").mkdir(parents=True)
    (sbd / "dataset" / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "dataset" / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    truth: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    names = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    for k, name in enumerate(names):
        h, w = 16 + k, 20 + 2 * k
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (voc / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg")
        voc_mask = np.zeros((h, w), np.uint8)
        voc_mask[2:8, 3:9] = k + 1
        voc_mask[2, 3:9] = 255  # VOC has void boundaries, SBD does not
        sbd_mask = np.zeros((h, w), np.uint8)
        sbd_mask[4:10, 1:6] = 20 - k
        if name in VOC_TRAIN or name in VOC_VAL:
            save_mask(voc / "SegmentationClass" / f"{name}.png", voc_mask)
            truth[name] = voc_mask
        else:
            truth[name] = sbd_mask
        if name in SBD_TRAIN or name in SBD_VAL:
            _write_sbd_mat(sbd / "dataset" / "cls" / f"{name}.mat", sbd_mask)
    return voc, sbd, truth


def test_read_sbd_mask_struct_layout(tmp_path: Path) -> None:
    seg = np.arange(20, dtype=np.uint8).reshape(4, 5)
    _write_sbd_mat(tmp_path / "x.mat", seg)
    out = read_sbd_mask(tmp_path / "x.mat")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, seg)
    savemat(tmp_path / "bad.mat", {"other": np.zeros(3)})
    with pytest.raises(DataError, match="bad.mat"):
        read_sbd_mask(tmp_path / "bad.mat")


def test_convert_sbd(tmp_path: Path) -> None:
    voc, sbd, truth = make_voc_sbd(tmp_path)
    result = convert_sbd(sbd, voc, progress=False)
    expected = sorted((set(VOC_TRAIN) | set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC_VAL))
    train_aug = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    assert train_aug.read_text().split() == expected == ["2007_000032", "2007_000039",
                                                         "2008_000002", "2008_000003"]
    assert result["num_train_aug"] == 4
    assert result["num_copied"] == 3 and result["num_converted"] == 2
    aug = voc / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == sorted(truth)
    for name, mask in truth.items():
        np.testing.assert_array_equal(load_mask(aug / f"{name}.png"), mask)
        if name in VOC_TRAIN + VOC_VAL:  # copied byte for byte
            assert (aug / f"{name}.png").read_bytes() == (
                voc / "SegmentationClass" / f"{name}.png").read_bytes()
    with Image.open(aug / "2008_000002.png") as im:
        assert im.mode == "P"
    ds = SegmentationDataset(root=voc, split="train_aug", mask_dir="SegmentationClassAug")
    assert len(ds) == 4 and ds.validate().num_images == 4


def test_convert_sbd_resume_and_errors(tmp_path: Path) -> None:
    voc, sbd, _ = make_voc_sbd(tmp_path)
    convert_sbd(sbd / "dataset", voc, progress=False)  # the dataset folder works too
    again = convert_sbd(sbd, voc, progress=False, overwrite=False)
    assert again["num_skipped"] == 5 and again["num_converted"] == 0
    missing = sbd / "dataset" / "cls" / "2008_000003.mat"
    missing.unlink()
    with pytest.raises(DataError, match="2008_000003.mat"):
        convert_sbd(sbd, voc, progress=False)
    with pytest.raises(DataError, match="dataset"):
        convert_sbd(tmp_path / "nowhere", voc, progress=False)
    (sbd / "dataset" / "val.txt").unlink()
    with pytest.raises(DataError, match="val.txt"):
        convert_sbd(sbd, voc, progress=False)


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------

H, W = 24, 32


def _rle(binary: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def _uncompressed_rle(binary: np.ndarray) -> dict:
    """COCO crowd style: run lengths over the column-major flattened mask, starting with zeros."""
    flat = binary.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [binary.shape[0], binary.shape[1]], "counts": counts}


def make_coco(root: Path) -> None:
    """train2014: image 9 (polygon + RLE + crowd, overlapping), image 25 (no annotations);
    val2014: image 42 (a gap id, 13 = stop sign, and 90 = toothbrush)."""
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": cid, "name": COCO_CLASSES[idx], "supercategory": "x"}
                  for cid, idx in COCO_ID_TO_INDEX.items()]
    small = np.zeros((H, W), np.uint8)
    small[5:10, 5:10] = 1  # inside the polygon
    crowd = np.zeros((H, W), np.uint8)
    crowd[18:24, 20:32] = 1  # overlaps the polygon's lower-right corner
    train = {
        "images": [
            {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W},
            {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": H, "width": W},
        ],
        "annotations": [
            # Listed first with the lowest id: only the area order keeps it on top.
            {"id": 1, "image_id": 9, "category_id": 90, "iscrowd": 0, "area": 25.0,
             "bbox": [5, 5, 5, 5], "segmentation": _rle(small)},
            {"id": 2, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 468.0,
             "bbox": [2, 2, 26, 18], "segmentation": [[2, 2, 28, 2, 28, 20, 2, 20]]},
            {"id": 3, "image_id": 9, "category_id": 3, "iscrowd": 1, "area": 72.0,
             "bbox": [20, 18, 12, 6], "segmentation": _uncompressed_rle(crowd)},
        ],
        "categories": categories,
    }
    square = np.zeros((H, W), np.uint8)
    square[0:12, 0:12] = 1
    val = {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": H, "width": W}
        ],
        "annotations": [
            {"id": 7, "image_id": 42, "category_id": 13, "iscrowd": 0, "area": 144.0,
             "bbox": [0, 0, 12, 12], "segmentation": _rle(square)},
            {"id": 8, "image_id": 42, "category_id": 90, "iscrowd": 0, "area": 144.0,
             "bbox": [0, 0, 12, 12], "segmentation": _rle(square)},
        ],
        "categories": categories,
    }
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(train))
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(val))
    for split, images in (("train2014", train["images"]), ("val2014", val["images"])):
        (root / split).mkdir()
        for info in images:
            image = Image.fromarray(np.full((H, W, 3), 128, np.uint8))
            image.save(root / split / info["file_name"])


def test_convert_coco(tmp_path: Path) -> None:
    coco_root, out = tmp_path / "coco", tmp_path / "coco_voc"
    make_coco(coco_root)
    result = convert_coco(coco_root, out, progress=False)
    assert result["splits"] == {"train": 2, "val": 1}
    assert result["num_images"] == 3 and result["num_empty"] == 1
    lists = out / "ImageSets" / "Segmentation"
    assert (lists / "train.txt").read_text().split() == [
        "COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    assert (lists / "val.txt").read_text().split() == ["COCO_val2014_000000000042"]
    assert (out / "classes.txt").read_text().split("\n")[:3] == ["background", "person", "bicycle"]

    toothbrush, person, car, stop_sign = 80, 1, 3, 12
    assert COCO_ID_TO_INDEX[90] == toothbrush and COCO_ID_TO_INDEX[13] == stop_sign
    mask = load_mask(out / "SegmentationClass" / "COCO_train2014_000000000009.png")
    assert mask.shape == (H, W)
    assert (mask[5:10, 5:10] == toothbrush).all()  # smaller object stays on top
    assert (mask[18:24, 20:32] == car).all()  # crowd painted as its class, above the person
    assert mask[12, 15] == person and mask[0, 0] == 0 and mask[22, 5] == 0
    assert set(np.unique(mask)) == {0, person, car, toothbrush}
    empty = load_mask(out / "SegmentationClass" / "COCO_train2014_000000000025.png")
    assert empty.shape == (H, W) and not empty.any()
    val_mask = load_mask(out / "SegmentationClass" / "COCO_val2014_000000000042.png")
    # Equal areas: ties broken by annotation id, so id 8 (toothbrush) is painted last.
    assert (val_mask[:12, :12] == toothbrush).all()

    with (out / "labels.csv").open() as handle:
        rows = {r[0]: r[1] for r in csv.reader(handle)}
    assert rows["COCO_train2014_000000000009"] == "person;car;toothbrush"
    assert rows["COCO_train2014_000000000025"] == ""
    assert rows["COCO_val2014_000000000042"] == "stop sign;toothbrush"  # both, though one is hidden

    ds = SegmentationDataset(
        root=out, split="val", image_dir=(coco_root / "train2014", coco_root / "val2014")
    )
    assert ds.num_classes == 80 and ds.label_source == "csv"
    vec = ds.label_vector(0)
    assert vec.shape == (80,) and np.flatnonzero(vec).tolist() == [stop_sign - 1, toothbrush - 1]
    train = SegmentationDataset(
        root=out, split="train", image_dir=(coco_root / "train2014", coco_root / "val2014")
    )
    report = train.validate()
    assert report.num_images == 2 and report.no_foreground == ["COCO_train2014_000000000025"]
    assert train[0]["mask"].shape == (H, W)


def test_convert_coco_limit_split_subset_and_resume(tmp_path: Path) -> None:
    coco_root, out = tmp_path / "coco", tmp_path / "coco_voc"
    make_coco(coco_root)
    result = convert_coco(coco_root, out, splits=("train2014",), progress=False, limit=1)
    assert result["splits"] == {"train": 1}
    assert (out / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == [
        "COCO_train2014_000000000009"]
    convert_coco(coco_root, out, splits=["val2014"], progress=False)
    with (out / "labels.csv").open() as handle:
        names = [r[0] for r in csv.reader(handle)][1:]
    assert names == ["COCO_train2014_000000000009", "COCO_val2014_000000000042"]  # rows kept
    again = convert_coco(coco_root, out, splits=["val2014"], progress=False, overwrite=False)
    assert again["num_skipped"] == 1


def test_convert_coco_errors(tmp_path: Path) -> None:
    coco_root = tmp_path / "coco"
    make_coco(coco_root)
    with pytest.raises(DataError, match="instances_test2015.json"):
        convert_coco(coco_root, tmp_path / "out", splits=("test2015",), progress=False)
    data = json.loads((coco_root / "annotations" / "instances_val2014.json").read_text())
    data["annotations"][0]["category_id"] = 12  # a gap in the 1..90 id range
    (coco_root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2014.json.*category id 12"):
        convert_coco(coco_root, tmp_path / "out", splits=("val2014",), progress=False)
