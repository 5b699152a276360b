"""SegmentationDataset on tiny VOC-layout roots written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.data.labels import VOC_CLASSES
from wsss.data.transforms import build_train_transform, normalize_image
from wsss.data.voc import SegmentationDataset, ValidationReport, name_from_entry
from wsss.io import DataError, save_mask

NAMES = ["2007_000032", "2007_000039", "2008_000002", "2010_001234", "2011_000007", "2012_003000"]
SIZES = [(16, 20), (24, 16), (20, 20), (32, 24), (18, 30), (16, 16)]  # (H, W)
# Foreground classes per image; the last image is background-only.
CLASSES = [[1], [15, 7], [20], [3, 12, 1], [19], []]


def _mask(h: int, w: int, classes: list[int]) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    for k, cls in enumerate(classes):
        mask[2 + k : 6 + k, 2 + 3 * k : 6 + 3 * k] = cls
    if classes:
        mask[0, :] = 255  # void border pixels do not count as a class
    return mask


def make_voc(root: Path, *, with_classes_txt: bool = False) -> Path:
    """Write a 6-image VOC layout: JPEGImages, SegmentationClass, train/val lists."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, (h, w), classes in zip(NAMES, SIZES, CLASSES):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.png")  # lossless
        save_mask(root / "SegmentationClass" / f"{name}.png", _mask(h, w, classes))
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(NAMES[:4]) + "\n")
    (lists / "val.txt").write_text("\n".join(NAMES[4:]) + "\n")
    (lists / "all.txt").write_text("\n".join(NAMES) + "\n")
    if with_classes_txt:
        (root / "classes.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    return root


def _expected_vector(classes: list[int], num_classes: int = 20) -> np.ndarray:
    vec = np.zeros(num_classes, dtype=np.float32)
    for c in classes:
        vec[c - 1] = 1
    return vec


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "voc")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def test_reads_voc_layout_with_masks(voc: Path) -> None:
    ds = SegmentationDataset(root=voc, split="all")
    assert len(ds) == 6 and ds.names == NAMES
    assert ds.num_classes == 20 and ds.class_names == list(VOC_CLASSES)
    assert ds.has_masks and ds.label_source == "masks"
    for i, (h, w) in enumerate(SIZES):
        sample = ds[i]
        assert set(sample) == {"image", "labels", "mask", "name", "index"}
        assert sample["image"].shape == (3, h, w) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == (h, w) and sample["mask"].dtype == torch.int64
        assert sample["labels"].dtype == torch.float32
        np.testing.assert_array_equal(sample["labels"].numpy(), _expected_vector(CLASSES[i]))
        assert sample["name"] == NAMES[i] and sample["index"] == i
        raw = ds.load_image(i)
        assert raw.dtype == np.uint8 and raw.shape == (h, w, 3)
        torch.testing.assert_close(sample["image"], normalize_image(raw))
        np.testing.assert_array_equal(sample["mask"].numpy(), ds.load_mask(i))
    assert ds.image_path(0) == voc / "JPEGImages" / f"{NAMES[0]}.png"
    assert ds.mask_path(0) == voc / "SegmentationClass" / f"{NAMES[0]}.png"
    assert ds[-1]["index"] == 5


def test_transform_and_default_loader_batch(voc: Path) -> None:
    ds = SegmentationDataset(
        root=voc,
        split="train",
        transform=build_train_transform(crop_size=12, scale_range=(0.9, 1.1)),
    )
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 12, 12)
    assert batch["mask"].shape == (4, 12, 12) and batch["mask"].dtype == torch.int64
    assert batch["labels"].shape == (4, 20)


def test_class_names_from_classes_txt_and_argument(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", with_classes_txt=True)
    (root / "classes.txt").write_text("background\n" + "\n".join(f"c{i}" for i in range(1, 21)))
    ds = SegmentationDataset(root=root, split="train")
    assert ds.class_names[:2] == ["background", "c1"] and ds.num_classes == 20
    ds = SegmentationDataset(root=root, split="train", class_names=list(VOC_CLASSES))
    assert ds.class_names == list(VOC_CLASSES)


def test_image_dir_sequence_relative_and_absolute(voc: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    moved = NAMES[1]
    (voc / "JPEGImages" / f"{moved}.png").rename(other / f"{moved}.png")
    ds = SegmentationDataset(root=voc, split="train", image_dir=("JPEGImages", other))
    assert ds.image_path(1) == other / f"{moved}.png"
    assert ds.image_path(0).parent == voc / "JPEGImages"
    assert ds[1]["image"].shape == (3, *SIZES[1])


def test_without_masks(voc: Path) -> None:
    labels = {n: _expected_vector(c) for n, c in zip(NAMES, CLASSES)}
    np.save(voc / "cls_labels.npy", labels)
    ds = SegmentationDataset(root=voc, split="train", mask_dir=None)
    assert not ds.has_masks and ds.mask_path(0) is None and ds.load_mask(0) is None
    sample = ds[0]
    assert "mask" not in sample
    assert ds.validate().num_images == 4


def test_missing_default_mask_dir_means_no_masks_but_labels_needed(voc: Path) -> None:
    import shutil

    shutil.rmtree(voc / "SegmentationClass")
    with pytest.raises(DataError, match="no image-level labels"):
        SegmentationDataset(root=voc, split="train")
    (voc / "labels.csv").write_text("".join(f"{n},aeroplane\n" for n in NAMES))
    ds = SegmentationDataset(root=voc, split="train")
    assert not ds.has_masks and ds.label_source == "csv"
    with pytest.raises(DataError, match="SegmentationClassAug"):
        SegmentationDataset(root=voc, split="train", mask_dir="SegmentationClassAug")


# ---------------------------------------------------------------------------------------------
# Label sources
# ---------------------------------------------------------------------------------------------


def test_cls_labels_int_and_str_keys_give_same_labels(voc: Path, tmp_path: Path) -> None:
    str_keys = {n: _expected_vector(c) for n, c in zip(NAMES, CLASSES)}
    int_keys = {np.int32(int(n.replace("_", ""))): v for n, v in str_keys.items()}
    np.save(tmp_path / "str.npy", str_keys)
    np.save(tmp_path / "int.npy", int_keys)
    by_str = SegmentationDataset(root=voc, split="all", labels_file=tmp_path / "str.npy")
    by_int = SegmentationDataset(root=voc, split="all", labels_file=tmp_path / "int.npy")
    by_mask = SegmentationDataset(root=voc, split="all", labels_from="masks")
    assert by_str.label_source == by_int.label_source == "cls_labels"
    for i in range(len(NAMES)):
        np.testing.assert_array_equal(by_str.label_vector(i), by_int.label_vector(i))
        np.testing.assert_array_equal(by_str.label_vector(i), by_mask.label_vector(i))
        assert by_int.label_vector(i).dtype == np.float32


def test_cls_labels_auto_detected_in_root(voc: Path) -> None:
    labels = {n: np.ones(20, np.float32) for n in NAMES}
    np.save(voc / "cls_labels.npy", labels)
    ds = SegmentationDataset(root=voc, split="train")
    assert ds.label_source == "cls_labels" and ds.labels_file == voc / "cls_labels.npy"
    assert ds.label_vector(0).sum() == 20
    assert ds[0]["labels"].sum() == 20  # file labels win over the mask


def test_cls_labels_wrong_length_names_file(voc: Path) -> None:
    np.save(voc / "cls_labels.npy", {n: np.ones(80, np.float32) for n in NAMES})
    ds = SegmentationDataset(root=voc, split="train")
    with pytest.raises(DataError, match="cls_labels.npy.*length 80"):
        ds.validate()


def test_csv_labels(voc: Path) -> None:
    rows = ["name,labels"]
    for n, classes in zip(NAMES, CLASSES):
        rows.append(f"{n}," + ";".join(VOC_CLASSES[c] for c in classes))
    (voc / "my.csv").write_text("\n".join(rows) + "\n")
    ds = SegmentationDataset(root=voc, split="all", labels_file="my.csv")  # relative to root
    assert ds.label_source == "csv"
    for i, classes in enumerate(CLASSES):
        np.testing.assert_array_equal(ds.label_vector(i), _expected_vector(classes))
    report = ds.validate()
    assert report.no_foreground == [NAMES[5]]
    # Header is optional.
    (voc / "nohead.csv").write_text("\n".join(rows[1:]) + "\n")
    ds2 = SegmentationDataset(root=voc, split="all", labels_from="csv", labels_file="nohead.csv")
    np.testing.assert_array_equal(ds2.label_vector(1), _expected_vector(CLASSES[1]))


def test_csv_unknown_class_names_class_and_file(voc: Path) -> None:
    (voc / "bad.csv").write_text(f"{NAMES[0]},aeroplane\n{NAMES[1]},person;unicorn\n")
    ds = SegmentationDataset(root=voc, split="train", labels_file="bad.csv")
    with pytest.raises(DataError) as err:
        ds.validate()
    message = str(err.value)
    assert "unicorn" in message and "bad.csv" in message and "line 2" in message


def test_name_missing_from_label_files(voc: Path) -> None:
    np.save(voc / "cls_labels.npy", {n: np.zeros(20, np.float32) for n in NAMES[:3]})
    ds = SegmentationDataset(root=voc, split="train")
    with pytest.raises(DataError) as err:
        ds.validate()
    assert NAMES[3] in str(err.value) and "cls_labels.npy" in str(err.value)
    (voc / "l.csv").write_text(f"{NAMES[0]},cat\n")
    ds = SegmentationDataset(root=voc, split="train", labels_file="l.csv")
    with pytest.raises(DataError) as err:
        ds.label_vector(1)
    assert NAMES[1] in str(err.value) and "l.csv" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Split lists
# ---------------------------------------------------------------------------------------------


def test_one_stage_style_list_lines(voc: Path) -> None:
    lines = [f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png" for n in NAMES[:3]]
    path = voc / "lists" / "train_paths.txt"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    ds = SegmentationDataset(root=voc, split=str(path))
    assert ds.names == NAMES[:3]
    ds = SegmentationDataset(root=voc, split="lists/train_paths.txt")  # relative to root
    assert ds.names == NAMES[:3]
    assert name_from_entry("a.b.c") == "a.b.c" and name_from_entry("x/a.b.JPG") == "a.b"


def test_missing_split_lists_available(voc: Path) -> None:
    with pytest.raises(DataError) as err:
        SegmentationDataset(root=voc, split="trainaug")
    message = str(err.value)
    assert "trainaug.txt" in message and "all, train, val" in message


def test_empty_split_names_file(voc: Path) -> None:
    (voc / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt.*empty"):
        SegmentationDataset(root=voc, split="empty")


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def test_validate_clean_dataset_and_no_foreground(voc: Path) -> None:
    ds = SegmentationDataset(root=voc, split="all")
    report = ds.validate(progress=False)
    assert isinstance(report, ValidationReport)
    assert report.num_images == 6 and report.no_foreground == [NAMES[5]]
    assert ds.validate(check_masks=False).no_foreground == [NAMES[5]]


def _validate_error(voc: Path, **kwargs) -> str:
    ds = SegmentationDataset(root=voc, split="all", **kwargs)
    with pytest.raises(DataError) as err:
        ds.validate()
    return str(err.value)


def test_validate_missing_image(voc: Path) -> None:
    (voc / "JPEGImages" / f"{NAMES[2]}.png").unlink()
    message = _validate_error(voc)
    assert f"{NAMES[2]}.jpg" in message and "not found" in message
    with pytest.raises(DataError, match=NAMES[2]):
        SegmentationDataset(root=voc, split="all")[2]


def test_validate_zero_byte_image(voc: Path) -> None:
    path = voc / "JPEGImages" / f"{NAMES[1]}.png"
    path.write_bytes(b"")
    message = _validate_error(voc)
    assert str(path) in message and "empty" in message


def test_validate_truncated_image(voc: Path) -> None:
    path = voc / "JPEGImages" / f"{NAMES[3]}.png"
    path.unlink()
    path = path.with_suffix(".jpg")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 24, 3), dtype=np.uint8)).save(
        path, quality=95
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _validate_error(voc)
    assert str(path) in message and "truncated" in message


def test_validate_garbage_image(voc: Path) -> None:
    path = voc / "JPEGImages" / f"{NAMES[0]}.png"
    path.write_bytes(b"this is not an image at all")
    message = _validate_error(voc)
    assert str(path) in message and "unreadable" in message


def test_validate_missing_mask(voc: Path) -> None:
    path = voc / "SegmentationClass" / f"{NAMES[4]}.png"
    path.unlink()
    message = _validate_error(voc)
    assert str(path) in message and "not found" in message


def test_validate_mask_size_mismatch(voc: Path) -> None:
    path = voc / "SegmentationClass" / f"{NAMES[0]}.png"
    save_mask(path, np.zeros((10, 10), np.uint8))
    message = _validate_error(voc)
    assert str(path) in message and "10x10" in message
    with pytest.raises(DataError, match=NAMES[0]):
        SegmentationDataset(root=voc, split="all")[0]


def test_validate_mask_values_out_of_range(voc: Path) -> None:
    path = voc / "SegmentationClass" / f"{NAMES[2]}.png"
    mask = _mask(*SIZES[2], [1])
    mask[5, 5] = 21
    mask[6, 6] = 254
    save_mask(path, mask)
    message = _validate_error(voc)
    assert str(path) in message and "[21, 254]" in message
    # With a smaller class list, value 20 is out of range too.
    names = ["background"] + [f"c{i}" for i in range(1, 11)]
    save_mask(path, _mask(*SIZES[2], [1]))
    message = _validate_error(voc, class_names=names)
    assert f"{NAMES[1]}.png" in message and "[15]" in message
    assert f"{NAMES[4]}.png" in message and "[19]" in message


def test_validate_rgb_mask(voc: Path) -> None:
    path = voc / "SegmentationClass" / f"{NAMES[1]}.png"
    Image.fromarray(np.zeros((*SIZES[1], 3), np.uint8)).save(path)
    message = _validate_error(voc)
    assert str(path) in message and "RGB" in message


def test_validate_16bit_mask(voc: Path) -> None:
    path = voc / "SegmentationClass" / f"{NAMES[1]}.png"
    Image.fromarray(np.zeros(SIZES[1], np.uint16)).save(path)
    message = _validate_error(voc)
    assert str(path) in message and "8-bit" in message


def test_validate_image_above_max_side(voc: Path) -> None:
    message = _validate_error(voc, max_image_side=30)
    # Only the 24x32 image is above 30 px; 30x18 is at the limit and allowed.
    assert f"{NAMES[3]}.png" in message and NAMES[4] not in message
    assert "30" in message and "max" in message
    with pytest.raises(DataError, match="above the maximum side"):
        SegmentationDataset(root=voc, split="all", max_image_side=30)[3]


def test_validate_reports_every_problem(voc: Path) -> None:
    (voc / "JPEGImages" / f"{NAMES[0]}.png").unlink()
    (voc / "SegmentationClass" / f"{NAMES[5]}.png").unlink()
    message = _validate_error(voc)
    assert message.startswith("2 problem(s)")
    assert NAMES[0] in message and NAMES[5] in message


def test_validate_uses_exif_orientation(voc: Path) -> None:
    name = NAMES[0]
    h, w = SIZES[0]
    (voc / "JPEGImages" / f"{name}.png").unlink()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated by 90 degrees
    stored = Image.fromarray(np.zeros((w, h, 3), np.uint8))
    stored.save(voc / "JPEGImages" / f"{name}.jpg", exif=exif)
    ds = SegmentationDataset(root=voc, split="all")
    assert ds.validate().num_images == 6  # mask (h, w) matches the oriented image
    assert ds[0]["image"].shape == (3, h, w)
