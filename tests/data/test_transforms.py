"""Paired transforms: geometry moves image and mask together, crops pad 255, seeds reproduce."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from wsss.data import transforms as T


def _pair(h: int = 21, w: int = 27, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image whose red channel encodes the mask, so every geometric change can be checked."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 21, size=(h, w), dtype=np.uint8)
    mask[0, 0] = 255
    image = np.stack([mask, rng.integers(0, 256, (h, w), dtype=np.uint8),
                      np.full((h, w), 7, np.uint8)], axis=-1)
    return image, mask


def test_random_crop_pads_mask_with_255_and_image_with_fill() -> None:
    image, mask = _pair(5, 7)
    crop = T.RandomCrop(10, image_fill=0, mask_fill=255, rng=random.Random(3))
    out_image, out_mask = crop(image, mask)
    assert out_image.shape == (10, 10, 3) and out_mask.shape == (10, 10)
    assert out_image.dtype == np.uint8 and out_mask.dtype == np.uint8
    inside = out_image[..., 2] == 7  # the constant channel marks pasted pixels
    assert inside.sum() == 35
    rows, cols = np.nonzero(inside)
    top, left = rows.min(), cols.min()
    np.testing.assert_array_equal(out_mask[top:top + 5, left:left + 7], mask)
    np.testing.assert_array_equal(out_image[top:top + 5, left:left + 7], image)
    assert (out_mask[~inside] == 255).all() and (out_image[~inside] == 0).all()


def test_random_crop_of_larger_image_is_a_window() -> None:
    image, mask = _pair(30, 40)
    normalised, _ = T.Normalize()(image, mask)
    out_image, out_mask = T.RandomCrop((8, 12), rng=random.Random(5))(normalised, mask)
    assert out_image.shape == (8, 12, 3) and out_image.dtype == np.float32
    found = [(i, j) for i in range(23) for j in range(29)
             if np.array_equal(mask[i:i + 8, j:j + 12], out_mask)]
    assert found
    i, j = found[0]
    np.testing.assert_array_equal(out_image, normalised[i:i + 8, j:j + 12])


def test_random_crop_mixed_axes_and_no_mask() -> None:
    image, mask = _pair(30, 6)
    mask[0, 0] = 0  # no ignore pixel inside the image, so every 255 is padding
    out_image, out_mask = T.RandomCrop(10, image_fill=-1.5)(image.astype(np.float32), mask)
    assert out_mask.shape == (10, 10) and (out_mask == 255).sum() == 40
    assert (out_image == -1.5).sum() == 40 * 3
    out_image, none = T.RandomCrop(10)(image, None)
    assert none is None and out_image.shape == (10, 10, 3)


def test_flip_moves_image_and_mask_together() -> None:
    image, mask = _pair()
    out_image, out_mask = T.RandomHorizontalFlip(p=1.0)(image, mask)
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_image[..., 0], out_mask)
    assert out_image.flags["C_CONTIGUOUS"]
    _, same_mask = T.RandomHorizontalFlip(p=0.0)(image, mask)
    np.testing.assert_array_equal(same_mask, mask)
    flips = sum(
        not np.array_equal(T.RandomHorizontalFlip(rng=random.Random(s))(image, mask)[1], mask)
        for s in range(200)
    )
    assert 60 < flips < 140


@pytest.mark.parametrize("scale", [0.5, 0.7, 1.3, 1.5, 2.0, 0.25])
def test_pil_rescale_sizes_follow_round(scale: float) -> None:
    image, mask = _pair(25, 31)
    out = T.pil_rescale(image, scale, 3)
    expected = (int(np.round(25 * scale)), int(np.round(31 * scale)))
    assert out.shape == (*expected, 3) and out.dtype == np.uint8
    out_mask = T.pil_rescale(mask, scale, 0)
    assert out_mask.shape == expected
    assert set(np.unique(out_mask)) <= set(np.unique(mask))  # nearest never invents values
    floats = T.pil_rescale(image.astype(np.float32) / 7.0, scale, 3)
    assert floats.shape == (*expected, 3) and floats.dtype == np.float32


def test_pil_rescale_round_half_to_even_and_identity() -> None:
    image, _ = _pair(25, 31)
    # 25 * 0.5 = 12.5 → 12 and 31 * 0.5 = 15.5 → 16 (np.round, as IRN).
    assert T.pil_rescale(image, 0.5, 3).shape[:2] == (12, 16)
    assert T.pil_rescale(image, 1.0, 3) is image


def test_random_rescale_uses_drawn_scale_for_both() -> None:
    image, mask = _pair(25, 31)
    out_image, out_mask = T.RandomRescale(0.5, 1.5, rng=random.Random(11))(image, mask)
    scale = 0.5 + random.Random(11).random() * 1.0
    expected = (int(np.round(25 * scale)), int(np.round(31 * scale)))
    assert out_image.shape[:2] == expected and out_mask.shape == expected


def test_random_resize_long() -> None:
    image, mask = _pair(20, 30)
    for seed in range(10):
        out_image, out_mask = T.RandomResizeLong(32, 48, rng=random.Random(seed))(image, mask)
        target = random.Random(seed).randint(32, 48)
        assert out_image.shape[1] == target  # width is the long side
        assert out_image.shape[:2] == out_mask.shape
        assert set(np.unique(out_mask)) <= set(np.unique(mask))
    tall_image, tall_mask = _pair(30, 20)
    out_image, _ = T.RandomResizeLong(40, 40)(tall_image, tall_mask)
    assert out_image.shape[:2] == (40, 27)  # 20 * 40/30 = 26.67 → 27


def test_normalize_and_to_tensor() -> None:
    image, mask = _pair()
    norm, same = T.Normalize()(image, mask)
    assert same is mask and norm.dtype == np.float32
    mean, std = np.array(T.IMAGENET_MEAN), np.array(T.IMAGENET_STD)
    expected = (image[5, 6].astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(norm[5, 6], expected, rtol=1e-5)
    image_t, mask_t = T.ToTensor()(norm, mask)
    assert image_t.shape == (3, 21, 27) and image_t.dtype == torch.float32
    assert mask_t.dtype == torch.int64 and mask_t.shape == (21, 27)
    torch.testing.assert_close(T.normalize_image(image), image_t)


def test_color_jitter_changes_image_only_and_is_seeded() -> None:
    image, mask = _pair()
    jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1, rng=random.Random(0))
    out_image, out_mask = jitter(image, mask)
    assert out_mask is mask and out_image.shape == image.shape and out_image.dtype == np.uint8
    assert not np.array_equal(out_image, image)
    again, _ = T.ColorJitter(0.4, 0.4, 0.4, 0.1, rng=random.Random(0))(image, mask)
    np.testing.assert_array_equal(out_image, again)
    unchanged, _ = T.ColorJitter()(image, mask)
    np.testing.assert_array_equal(unchanged, image)
    with pytest.raises(TypeError, match="uint8"):
        jitter(image.astype(np.float32), mask)


def test_train_pipeline_deterministic_under_seeds() -> None:
    image, mask = _pair(40, 50)
    pipeline = T.build_train_transform(
        crop_size=32, resize_long=(30, 60), scale_range=(0.7, 1.3),
        color_jitter=(0.3, 0.3, 0.3, 0.05),
    )

    def run(seed: int):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return pipeline(image, mask)

    a_image, a_mask = run(1)
    b_image, b_mask = run(1)
    c_image, c_mask = run(2)
    torch.testing.assert_close(a_image, b_image)
    assert torch.equal(a_mask, b_mask)
    assert not torch.equal(a_mask, c_mask) or not torch.equal(a_image, c_image)
    assert a_image.shape == (3, 32, 32) and a_mask.shape == (32, 32)
    assert a_mask.dtype == torch.int64 and a_image.dtype == torch.float32
    # Padded pixels: image 0 (normalised mean), mask 255.
    zero = (a_image == 0).all(dim=0)
    assert (a_mask[zero] == 255).all()


def test_train_pipeline_with_private_rng_ignores_global_state() -> None:
    image, mask = _pair(40, 50)
    outs = []
    for global_seed in (0, 99):
        random.seed(global_seed)
        pipeline = T.build_train_transform(
            crop_size=16, scale_range=(0.5, 1.5), rng=random.Random(7)
        )
        outs.append(pipeline(image, mask))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.image, self.mask = _pair(24, 24)
        self.transform = T.build_train_transform(crop_size=16, scale_range=(0.5, 1.5))

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return self.transform(self.image, self.mask)[1]


def test_dataloader_workers_reproducible_under_torch_seed() -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(123)
        random.seed(123)
        np.random.seed(123)
        loader = torch.utils.data.DataLoader(_PairDataset(), batch_size=8, num_workers=2)
        return next(iter(loader))

    assert torch.equal(run(), run())


def test_eval_transform_keeps_geometry() -> None:
    image, mask = _pair()
    image_t, mask_t = T.build_eval_transform()(image, mask)
    assert image_t.shape == (3, 21, 27)
    np.testing.assert_array_equal(mask_t.numpy(), mask)
    image_t, none = T.build_eval_transform()(image, None)
    assert none is None


def test_transforms_do_not_mutate_inputs() -> None:
    image, mask = _pair()
    image_copy, mask_copy = image.copy(), mask.copy()
    T.build_train_transform(crop_size=40, resize_long=(20, 40), scale_range=(0.5, 1.5),
                            color_jitter=(0.2, 0.2, 0.2, 0.1))(image, mask)
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(mask, mask_copy)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        T.RandomResizeLong(10, 5)
    with pytest.raises(ValueError):
        T.RandomRescale(0, 1)
    with pytest.raises(ValueError):
        T.ColorJitter(hue=0.7)
    with pytest.raises(ValueError):
        T.build_train_transform(crop_size=8, color_jitter=(0.1, 0.1))


def test_resize_long_rounding_follows_irn_or_psa() -> None:
    """A 110x500 image at target 275 (the case the parity check found): PSA / ICAM's
    RandomResizeLong gives round(110 * 275 / 500) = round(60.5) = 60 rows, IRN's pil_rescale
    round(110 * (275 / 500)) = round(60.50000000000001) = 61."""
    from wsss.data.transforms import RandomResizeLong

    image = np.zeros((110, 500, 3), dtype=np.uint8)
    mask = np.zeros((110, 500), dtype=np.uint8)
    sizes = {}
    for rounding in ("irn", "psa"):
        resize = RandomResizeLong(275, 275, rng=random.Random(0), rounding=rounding)
        out, out_mask = resize(image, mask)
        assert out.shape[:2] == out_mask.shape
        sizes[rounding] = out.shape[:2]
    assert sizes == {"irn": (61, 275), "psa": (60, 275)}
    tall = RandomResizeLong(275, 275, rng=random.Random(0), rounding="psa")(
        np.zeros((500, 110, 3), dtype=np.uint8))[0]
    assert tall.shape[:2] == (275, 60)
    with pytest.raises(ValueError, match="rounding"):
        RandomResizeLong(1, 2, rounding="pil")


def test_psa_presets_use_psa_resize_rounding() -> None:
    from pathlib import Path

    from wsss.config import load_config

    configs = Path(__file__).resolve().parents[2] / "configs" / "voc"
    for name in ("cam_affinitynet", "icam", "auxsegnet"):
        assert load_config(configs / f"{name}.yaml", []).train.resize_long_rounding == "psa"
    assert load_config(configs / "cam_baseline.yaml", []).train.resize_long_rounding == "irn"
