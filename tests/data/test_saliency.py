"""Saliency folders: reading, resizing, up-front validation errors, the dataset wrapper and the
paired image / mask / saliency augmentation."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.data.saliency import (
    SaliencyAugment,
    SaliencyDataset,
    check_saliency_folder,
    load_saliency,
    resolve_saliency_dir,
    save_saliency,
)
from wsss.data.voc import SegmentationDataset
from wsss.io import DataError


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_load_saliency_scales_and_resizes(tmp_path: Path) -> None:
    plane = np.zeros((16, 24), dtype=np.uint8)
    plane[:, 12:] = 255
    path = _png(tmp_path / "a.png", plane)
    same = load_saliency(path, (16, 24))
    assert same.dtype == np.float32 and same.shape == (16, 24)
    assert same[:, :12].max() == 0.0 and same[:, 12:].min() == 1.0
    bigger = load_saliency(path, (32, 48))  # any size with the image's shape is resized
    assert bigger.shape == (32, 48) and 0.0 <= bigger.min() and bigger.max() <= 1.0
    assert bigger[:, :20].max() == 0.0 and bigger[:, 28:].min() == 1.0
    # 16-bit and RGB maps are read too.
    wide = _png(tmp_path / "b.png", plane.astype(np.uint16) * 257)
    np.testing.assert_allclose(load_saliency(wide, (16, 24)), same, atol=1e-6)
    rgb = _png(tmp_path / "c.png", np.repeat(plane[..., None], 3, axis=2))
    np.testing.assert_allclose(load_saliency(rgb, (16, 24)), same, atol=1e-6)


def test_save_saliency_round_trip(tmp_path: Path) -> None:
    s = np.array([[0.0, 0.5, 0.999, 1.0]], dtype=np.float32)
    save_saliency(tmp_path / "s.png", s)
    with Image.open(tmp_path / "s.png") as image:
        assert image.mode == "L"
        assert np.asarray(image).tolist() == [[0, 127, 254, 255]]  # ⌊255·s⌋


def test_load_saliency_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="saliency map missing: .*nope.png"):
        load_saliency(tmp_path / "nope.png", (8, 8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DataError, match="bad.png: unreadable saliency map"):
        load_saliency(bad, (8, 8))
    good = _png(tmp_path / "trunc.png", np.random.default_rng(0).integers(0, 255, (64, 64),
                                                                           dtype=np.uint8))
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="trunc.png: unreadable"):
        load_saliency(good, (64, 64))
    tall = _png(tmp_path / "tall.png", np.zeros((30, 10), dtype=np.uint8))
    with pytest.raises(DataError, match="tall.png: saliency map is 10x30 but the image is 20x10"):
        load_saliency(tall, (10, 20))


def test_resolve_saliency_dir(tmp_path: Path) -> None:
    assert resolve_saliency_dir(tmp_path, "SaliencyMaps") == tmp_path / "SaliencyMaps"
    assert resolve_saliency_dir(tmp_path, "/abs/sal") == Path("/abs/sal")


def _copy_root(synthetic_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def test_check_saliency_folder(synthetic_root: Path, tmp_path: Path) -> None:
    dataset = SegmentationDataset(root=synthetic_root, split="train")
    assert check_saliency_folder(synthetic_root / "SaliencyMaps", dataset) == len(dataset)
    with pytest.raises(DataError, match="saliency folder not found"):
        check_saliency_folder(tmp_path / "missing", dataset)

    root = _copy_root(synthetic_root, tmp_path)
    dataset = SegmentationDataset(root=root, split="train")
    first, second, third = dataset.names[:3]
    (root / "SaliencyMaps" / f"{first}.png").unlink()
    (root / "SaliencyMaps" / f"{second}.png").write_bytes(b"corrupt")
    _png(root / "SaliencyMaps" / f"{third}.png", np.zeros((10, 40), dtype=np.uint8))
    with pytest.raises(DataError) as err:
        check_saliency_folder(root / "SaliencyMaps", dataset)
    message = str(err.value)
    assert "3 bad saliency map(s)" in message
    assert f"missing: {root / 'SaliencyMaps' / first}.png" in message
    assert f"{second}.png: unreadable" in message
    assert f"{third}.png: saliency map is 40x10" in message


def test_dataset_adds_saliency(synthetic_root: Path) -> None:
    base = SegmentationDataset(root=synthetic_root, split="train")
    dataset = SaliencyDataset(base, synthetic_root / "SaliencyMaps")
    sample = dataset[0]
    image = base.load_image(0)
    assert sample["saliency"].shape == image.shape[:2] and sample["saliency"].dtype == torch.float32
    assert 0.0 <= float(sample["saliency"].min()) and float(sample["saliency"].max()) <= 1.0
    with Image.open(synthetic_root / "SaliencyMaps" / f"{base.names[0]}.png") as raw:
        np.testing.assert_allclose(sample["saliency"].numpy(), np.asarray(raw) / 255.0, atol=1e-6)
    assert torch.equal(sample["mask"], torch.from_numpy(base.load_mask(0).astype(np.int64)))
    assert set(sample) == {"image", "labels", "mask", "saliency", "name", "index"}
    with pytest.raises(DataError, match="saliency folder not found"):
        SaliencyDataset(base, synthetic_root / "nope")


def test_dataset_pseudo_label_folder(synthetic_root: Path, tmp_path: Path) -> None:
    base = SegmentationDataset(root=synthetic_root, split="train")
    masks = tmp_path / "masks"
    h, w = base.load_image(0).shape[:2]
    _png(masks / f"{base.names[0]}.png", np.full((h, w), 255, dtype=np.uint8))
    dataset = SaliencyDataset(base, synthetic_root / "SaliencyMaps", mask_dir=masks)
    assert (dataset[0]["mask"] == 255).all()
    with pytest.raises(DataError, match="pseudo-label mask missing"):
        dataset[1]
    _png(masks / f"{base.names[1]}.png", np.zeros((h + 2, w), dtype=np.uint8))
    with pytest.raises(DataError, match="mask is"):
        dataset[1]


def test_augment_moves_image_mask_and_saliency_together() -> None:
    # A vertical edge at column 20 of 32 in all three inputs must stay aligned.
    image = np.zeros((24, 32, 3), dtype=np.uint8)
    image[:, 20:] = 255
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[:, 20:] = 1
    sal = np.zeros((24, 32), dtype=np.float32)
    sal[:, 20:] = 1.0
    for seed in range(6):
        aug = SaliencyAugment(crop_size=16, scale_range=(0.7, 1.3), flip=True,
                              rng=random.Random(seed))
        img_t, mask_t, sal_t = aug(image, mask, sal)
        assert img_t.shape == (3, 16, 16) and mask_t.shape == sal_t.shape == (16, 16)
        bright = img_t[0] > 0  # normalised white > 0 > normalised black
        fg = mask_t == 1
        assert torch.equal(bright, fg) and torch.equal(sal_t > 0.5, fg)


def test_augment_pads_bottom_right() -> None:
    image = np.full((10, 12, 3), 255, dtype=np.uint8)
    mask = np.ones((10, 12), dtype=np.uint8)
    sal = np.ones((10, 12), dtype=np.float32)
    for fill in (255, 0):
        aug = SaliencyAugment(crop_size=16, flip=False, mask_fill=fill, rng=random.Random(0))
        img_t, mask_t, sal_t = aug(image, mask, sal)
        assert (mask_t[:10, :12] == 1).all() and (sal_t[:10, :12] == 1).all()
        assert (mask_t[10:] == fill).all() and (mask_t[:, 12:] == fill).all()
        assert (sal_t[10:] == 0).all() and (img_t[:, 10:] == 0).all()
    with pytest.raises(ValueError, match="share"):
        aug(image, mask, sal[:5])
