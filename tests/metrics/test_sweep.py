"""Threshold sweep: the one-pass stack equals a per-threshold brute force; per-image optima."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wsss.metrics import (
    ThresholdSweep,
    confusion_matrix,
    default_thresholds,
    iou,
    miou,
    sweep_confusion,
)


def cams_to_mask(cams: np.ndarray, keys: np.ndarray, tau: float) -> np.ndarray:
    """Brute-force reference: argmax over [τ plane; cams] (τ plane in the CAMs' dtype)."""
    plane = np.full((1, *cams.shape[1:]), tau, dtype=cams.dtype)
    labels = np.concatenate([[0], keys]).astype(np.int64)
    return labels[np.concatenate([plane, cams]).argmax(0)]


def brute_force(cams, keys, gt, thresholds, n):
    return torch.stack([confusion_matrix(cams_to_mask(cams, keys, t), gt, n) for t in thresholds])


def test_default_thresholds():
    th = default_thresholds()
    assert th.shape == (100,) and th[0] == 0.0 and th[-1] == 0.99
    assert 0.15 in th and 0.25 in th  # exact literals (IRN / AMN defaults)
    seam = default_thresholds(stop=0.6)
    assert seam.shape == (60,) and seam[-1] == 0.59


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("num_channels", [0, 1, 3])
def test_sweep_equals_brute_force(dtype, num_channels):
    rng = np.random.default_rng(num_channels)
    n = 6
    for trial in range(3):
        h, w = 17, 23
        # Scores on a 0.05 grid: ties between channels and with the thresholds are common.
        cams = (rng.integers(0, 21, (num_channels, h, w)) / 20).astype(dtype)
        keys = rng.choice(np.arange(1, n), num_channels, replace=False)
        gt = rng.choice([0, 1, 2, 3, 4, 5, 255], (h, w))
        thresholds = default_thresholds(0.05)
        if trial:
            thresholds = rng.permutation(thresholds)  # any order; the output follows it
        got = sweep_confusion(cams, keys, gt, thresholds, n)
        assert got.dtype == torch.int64 and got.shape == (len(thresholds), n, n + 1)
        assert torch.equal(got, brute_force(cams, keys, gt, thresholds, n))


def test_sweep_ties_go_to_background_and_first_channel():
    cams = np.array([[[0.5, 0.3]], [[0.5, 0.7]]], dtype=np.float32)  # (2, 1, 2)
    keys = np.array([2, 1])
    gt = np.array([[2, 1]])
    stack = sweep_confusion(cams, keys, gt, [0.5, 0.3], 3)
    # τ = 0.5: pixel 0 (max 0.5, a tie with τ) → background; pixel 1 → class 1.
    assert stack[0, 2, 0] == 1 and stack[0, 1, 1] == 1
    # τ = 0.3: pixel 0 → channel 0 (first of the tied channels) → class 2.
    assert stack[1, 2, 2] == 1 and stack[1, 1, 1] == 1


def test_sweep_accepts_torch_and_explicit_background_key():
    rng = np.random.default_rng(7)
    cams = rng.random((3, 9, 11)).astype(np.float32)
    keys = np.array([0, 2, 4])  # a stored background channel has key 0
    gt = rng.integers(0, 5, (9, 11))
    th = [0.2, 0.6]
    expected = brute_force(cams, keys, gt, th, 5)
    got = sweep_confusion(
        torch.from_numpy(cams), torch.from_numpy(keys), torch.from_numpy(gt), th, 5
    )
    assert torch.equal(got, expected)


def test_sweep_bad_inputs():
    cams = np.zeros((2, 4, 4), np.float32)
    gt = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match="keys"):
        sweep_confusion(cams, [1], gt, [0.5], 3)
    with pytest.raises(ValueError, match="keys"):
        sweep_confusion(cams, [1, 3], gt, [0.5], 3)
    with pytest.raises(ValueError, match="shape"):
        sweep_confusion(cams, [1, 2], np.zeros((4, 5), int), [0.5], 3)
    with pytest.raises(ValueError, match="NaN"):
        sweep_confusion(np.full((2, 4, 4), np.nan, np.float32), [1, 2], gt, [0.5], 3)
    with pytest.raises(ValueError, match="thresholds"):
        sweep_confusion(cams, [1, 2], gt, [], 3)


def _image(inside: float, outside: float):
    """4×4 image: class 1 on the left half; its CAM is `inside` there, `outside` elsewhere."""
    gt = np.zeros((4, 4), int)
    gt[:, :2] = 1
    cams = np.where(gt == 1, inside, outside).astype(np.float32)[None]
    return cams, np.array([1]), gt


def test_threshold_sweep_per_image_best_and_totals():
    thresholds = default_thresholds(0.1)  # 0.0 .. 0.9
    sweep = ThresholdSweep(3, thresholds)
    images = {"a": _image(0.6, 0.4), "b": _image(0.2, 0.1)}
    curves = {name: sweep.update(*img, name=name) for name, img in images.items()}
    # Image a is perfect for 0.4 <= τ < 0.6, image b for 0.1 <= τ < 0.2 (ties → background).
    assert sweep.per_image_best_thresholds() == {"a": 0.4, "b": 0.1}
    assert curves["a"][4] == 1.0 and curves["b"][1] == 1.0
    # Per-image mIoU averages the classes present in that image's GT or prediction only (class
    # 2 never appears): at τ = 0.9 image a predicts all background → IoU_bg 0.5, IoU_1 0.
    assert curves["a"][9] == pytest.approx(0.25)

    expected = sum(brute_force(*img, thresholds, 3) for img in images.values())
    assert torch.equal(sweep.stack, expected)
    total = miou(expected).numpy()
    np.testing.assert_allclose(sweep.miou_curve(), total)
    assert sweep.miou_at(0.4) == pytest.approx(total[4])
    with pytest.raises(ValueError, match="grid"):
        sweep.miou_at(0.45)

    summary = json.loads(json.dumps(sweep.summary(["background", "cat", "dog"])))
    best = int(np.nanargmax(total))
    assert summary["best_threshold"] == pytest.approx(thresholds[best])
    assert summary["best_miou"] == pytest.approx(total[best])
    assert summary["best_is_oracle"] is True
    assert summary["num_images"] == 2
    assert summary["per_image_best_thresholds"] == {"a": 0.4, "b": 0.1}
    assert summary["mean_per_image_best_miou"] == 1.0
    assert summary["best_iou"]["dog"] is None
    assert summary["best_iou"]["cat"] == pytest.approx(float(iou(expected[best])[1]))
    assert len(summary["miou"]) == len(thresholds)
    assert torch.equal(sweep.matrix_at(0.4), expected[4])


def test_threshold_sweep_unnamed_void_and_duplicates():
    sweep = ThresholdSweep(2, [0.5])
    cams, keys, gt = _image(0.9, 0.1)
    sweep.update(cams, keys, gt)
    curve = sweep.update(cams, keys, np.full_like(gt, 255))  # no labelled pixel
    assert math.isnan(curve[0])
    sweep.update(cams, keys, gt, name="x")
    with pytest.raises(ValueError, match="already"):
        sweep.update(cams, keys, gt, name="x")
    assert sweep.per_image_best_thresholds() == {"#0": 0.5, "#1": None, "x": 0.5}
    assert sweep.summary()["num_images"] == 3


def test_threshold_sweep_empty_summary():
    summary = ThresholdSweep(3, [0.1, 0.2]).summary()
    assert summary["best_threshold"] is None and summary["miou"] == [None, None]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_sweep_matches_library_cams_to_mask(dtype):
    from wsss.ops.cam import cams_to_mask as library_cams_to_mask

    rng = np.random.default_rng(11)
    cams = (rng.integers(0, 21, (3, 15, 19)) / 20).astype(dtype)
    keys = np.array([5, 2, 4])
    gt = rng.choice([0, 1, 2, 3, 4, 5, 255], (15, 19))
    thresholds = default_thresholds()
    expected = torch.stack([
        confusion_matrix(library_cams_to_mask(cams, keys, bg_threshold=float(t)), gt, 6)
        for t in thresholds
    ])
    assert torch.equal(sweep_confusion(cams, keys, gt, thresholds, 6), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sweep_on_cuda_matches_cpu():
    rng = np.random.default_rng(12)
    cams = torch.from_numpy((rng.integers(0, 21, (4, 64, 48)) / 20).astype(np.float32))
    keys = torch.tensor([1, 3, 5, 7])
    gt = torch.from_numpy(rng.choice([0, 1, 3, 5, 7, 255], (64, 48)))
    th = default_thresholds()
    on_gpu = sweep_confusion(cams.cuda(), keys.cuda(), gt.cuda(), th, 8)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), sweep_confusion(cams, keys, gt, th, 8))
