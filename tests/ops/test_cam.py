"""Tests for wsss.ops.cam: strided sizes, normalisation, merging, masks, probabilities, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.ops.cam import (
    cams_to_mask,
    cams_to_probs,
    merge_multiscale,
    normalize_cams,
    seeds_from_cams,
    strided_size,
    strided_up_size,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- strided sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "stride", "expected"),
    [
        ((375, 500), 4, (94, 125)),
        ((500, 375), 16, (32, 24)),
        ((512, 512), 16, (32, 32)),
        ((513, 1), 16, (33, 1)),
        ((7, 9), 1, (7, 9)),
    ],
)
def test_strided_size_hand_values(size, stride, expected):
    assert strided_size(size, stride) == expected


@pytest.mark.parametrize(
    ("size", "stride", "expected"),
    [
        ((375, 500), 16, (384, 512)),
        ((500, 375), 16, (512, 384)),
        ((512, 512), 16, (512, 512)),
        ((375, 500), 4, (376, 500)),
    ],
)
def test_strided_up_size_hand_values(size, stride, expected):
    assert strided_up_size(size, stride) == expected


def test_strided_size_rejects_zero_stride():
    with pytest.raises(ValueError):
        strided_size((10, 10), 0)


# --- normalize_cams ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 16, 20), (2, 3, 16, 20)])
@pytest.mark.parametrize("mode", ["max", "minmax"])
def test_normalize_preserves_shape_dtype_device_and_range(device, dtype, shape, mode):
    g = torch.Generator().manual_seed(0)
    cams = (torch.randn(shape, generator=g) * 5).to(device=device, dtype=dtype)
    before = cams.clone()
    out = normalize_cams(cams, mode=mode)
    assert out.shape == cams.shape
    assert out.dtype == dtype
    assert out.device == cams.device
    assert out.min() >= 0 and out.max() <= 1
    # Every map reaches (almost) 1 at its peak.
    peaks = out.amax(dim=(-2, -1))
    assert torch.allclose(peaks, torch.ones_like(peaks), atol=1e-4)
    assert torch.equal(cams, before)


def test_normalize_max_applies_relu_and_divides_by_own_max():
    cams = torch.tensor(
        [
            [[-1.0, 0.0], [2.0, 4.0]],
            [[-3.0, -1.0], [-2.0, -5.0]],  # all negative → all zero
            [[0.5, 1.0], [0.25, 0.0]],
        ]
    )
    out = normalize_cams(cams, mode="max", eps=1e-5)
    expected = torch.tensor(
        [
            [[0.0, 0.0], [2.0 / (4 + 1e-5), 4.0 / (4 + 1e-5)]],
            [[0.0, 0.0], [0.0, 0.0]],
            [[0.5 / (1 + 1e-5), 1.0 / (1 + 1e-5)], [0.25 / (1 + 1e-5), 0.0]],
        ]
    )
    torch.testing.assert_close(out, expected)


def test_normalize_minmax_exact():
    cams = torch.tensor([[[-2.0, 0.0], [2.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    out = normalize_cams(cams, mode="minmax", eps=1e-5)
    expected = torch.tensor(
        [[[0.0, 2.0 / (8 + 1e-5)], [4.0 / (8 + 1e-5), 8.0 / (8 + 1e-5)]], [[0.0] * 2] * 2],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_normalize_is_per_map_in_a_batch():
    cams = torch.zeros(2, 2, 4, 4)
    cams[0, 0, 0, 0] = 10.0
    cams[0, 1, 1, 1] = 1.0
    cams[1, 0, 2, 2] = 0.1
    out = normalize_cams(cams)
    assert out[0, 0, 0, 0] > 0.999 and out[0, 1, 1, 1] > 0.999 and out[1, 0, 2, 2] > 0.99
    assert out[1, 1].abs().max() == 0


def test_normalize_numpy_in_numpy_out():
    cams = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    out = normalize_cams(cams)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == cams.shape
    np.testing.assert_allclose(out, normalize_cams(torch.from_numpy(cams)).numpy())


def test_normalize_rejects_bad_input():
    with pytest.raises(ValueError):
        normalize_cams(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        normalize_cams(torch.zeros(1, 4, 4), mode="softmax")


# --- merge_multiscale ----------------------------------------------------------------------


def test_merge_multiscale_matches_bilinear_sum_and_mean():
    g = torch.Generator().manual_seed(1)
    maps = [torch.rand(3, s, s + 2, generator=g) for s in (8, 16, 24)]
    size = (20, 25)
    ref = sum(
        F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0] for m in maps
    )
    out_sum = merge_multiscale(maps, size)
    out_mean = merge_multiscale(maps, size, reduce="mean")
    assert out_sum.shape == (3, 20, 25)
    torch.testing.assert_close(out_sum, ref)
    torch.testing.assert_close(out_mean, ref / 3)


def test_merge_multiscale_constant_maps_stay_constant():
    maps = [torch.full((2, 5, 7), 0.5), torch.full((2, 11, 13), 0.25)]
    out = merge_multiscale(maps, (32, 40), align_corners=True)
    torch.testing.assert_close(out, torch.full((2, 32, 40), 0.75))


def test_merge_multiscale_irn_high_res_crop_and_batched():
    maps = [torch.rand(2, 3, 24, 32), torch.rand(2, 3, 12, 16)]
    up = strided_up_size((375, 500), 16)
    out = merge_multiscale(maps, up)[..., :375, :500]
    assert out.shape == (2, 3, 375, 500)
    single = merge_multiscale([m[0] for m in maps], up)
    torch.testing.assert_close(merge_multiscale(maps, up)[0], single)


@pytest.mark.parametrize("device", DEVICES)
def test_merge_multiscale_keeps_device_and_dtype(device):
    maps = [torch.rand(1, 4, 4, dtype=torch.float64, device=device)]
    out = merge_multiscale(maps, (8, 8))
    assert out.dtype == torch.float64 and out.device == maps[0].device


def test_merge_multiscale_rejects_bad_input():
    with pytest.raises(ValueError):
        merge_multiscale([], (4, 4))
    with pytest.raises(ValueError):
        merge_multiscale([torch.rand(2, 4, 4), torch.rand(3, 4, 4)], (4, 4))
    with pytest.raises(ValueError):
        merge_multiscale([torch.rand(2, 4, 4)], (4, 4), reduce="max")


# --- cams_to_mask --------------------------------------------------------------------------


def test_cams_to_mask_hand_case_with_ties():
    # Pixels: clear class 1 → key 5; clear class 2 → key 9; below τ → 0; equal to τ → 0 (tie goes
    # to background); tie between the classes → the first channel.
    cams = torch.tensor(
        [
            [[0.9, 0.1, 0.05, 0.2, 0.6]],
            [[0.3, 0.8, 0.10, 0.0, 0.6]],
        ]
    )
    mask = cams_to_mask(cams, torch.tensor([5, 9]), bg_threshold=0.2)
    assert mask.dtype == torch.int64 and mask.shape == (1, 5)
    assert mask.tolist() == [[5, 9, 0, 0, 5]]


def test_cams_to_mask_equals_argmax_over_padded_stack():
    rng = np.random.default_rng(3)
    cams = rng.random((4, 16, 24)).astype(np.float32)
    keys = np.array([2, 7, 11, 20])
    tau = 0.6
    stacked = np.concatenate([np.full((1, 16, 24), tau, np.float32), cams])
    expected = np.concatenate([[0], keys])[np.argmax(stacked, axis=0)]
    out = cams_to_mask(cams, keys, bg_threshold=tau)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


def test_cams_to_mask_no_classes_is_all_background():
    out = cams_to_mask(torch.zeros(0, 6, 7), torch.zeros(0, dtype=torch.int64), bg_threshold=0.1)
    assert out.shape == (6, 7) and out.dtype == torch.int64 and out.abs().sum() == 0
    out_np = cams_to_mask(np.zeros((0, 3, 4), np.float32), [], bg_threshold=0.1)
    assert out_np.shape == (3, 4) and not out_np.any()


@pytest.mark.parametrize("device", DEVICES)
def test_cams_to_mask_follows_device(device):
    cams = torch.rand(2, 8, 8, device=device)
    out = cams_to_mask(cams, [1, 2], bg_threshold=0.5)
    assert out.device == cams.device


def test_cams_to_mask_rejects_key_count_mismatch():
    with pytest.raises(ValueError):
        cams_to_mask(torch.rand(2, 4, 4), [1], bg_threshold=0.1)


# --- cams_to_probs -------------------------------------------------------------------------


def test_cams_to_probs_threshold_plane_and_placement():
    cams = torch.rand(2, 5, 6)
    out = cams_to_probs(cams, [3, 1], num_classes=4, bg_threshold=0.25)
    assert out.shape == (5, 5, 6)
    torch.testing.assert_close(out[0], torch.full((5, 6), 0.25))
    torch.testing.assert_close(out[3], cams[0])
    torch.testing.assert_close(out[1], cams[1])
    assert out[2].abs().max() == 0 and out[4].abs().max() == 0
    # The argmax of the dense stack is the mask rule.
    torch.testing.assert_close(out.argmax(0), cams_to_mask(cams, [3, 1], bg_threshold=0.25))


def test_cams_to_probs_power_background():
    cams = np.array([[[0.2, 1.0]], [[0.6, 0.1]]], dtype=np.float32)
    out = cams_to_probs(cams, np.array([1, 2]), 2, bg_power=3)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[0.4**3, 0.0]], rtol=1e-6, atol=1e-7)
    empty = cams_to_probs(np.zeros((0, 2, 2), np.float32), [], 3, bg_power=8)
    np.testing.assert_array_equal(empty[0], np.ones((2, 2)))
    assert not empty[1:].any()


def test_cams_to_probs_explicit_background_channel_and_errors():
    cams = torch.rand(2, 3, 3)
    out = cams_to_probs(cams, [0, 2], 2)
    torch.testing.assert_close(out[0], cams[0])
    torch.testing.assert_close(out[2], cams[1])
    with pytest.raises(ValueError):
        cams_to_probs(cams, [0, 2], 2, bg_threshold=0.1)
    with pytest.raises(ValueError):
        cams_to_probs(cams, [1, 2], 2)
    with pytest.raises(ValueError):
        cams_to_probs(cams, [1, 2], 2, bg_threshold=0.1, bg_power=2)
    with pytest.raises(ValueError):
        cams_to_probs(cams, [1, 1], 2, bg_threshold=0.1)
    with pytest.raises(ValueError):
        cams_to_probs(cams, [1, 3], 2, bg_threshold=0.1)


# --- seeds_from_cams -----------------------------------------------------------------------


def _seed_rule(cams, keys, fg_t, bg_t):
    """The IRN rule written out literally on the padded argmax stacks."""
    keys_ext = np.concatenate([[0], keys])

    def argmax_with_plane(t):
        return np.argmax(np.concatenate([np.full((1,) + cams.shape[1:], t, cams.dtype), cams]), 0)

    fg = argmax_with_plane(fg_t)
    bg = argmax_with_plane(bg_t)
    conf = keys_ext[fg].copy()
    conf[keys_ext[fg] == 0] = 255
    conf[(keys_ext[fg] + keys_ext[bg]) == 0] = 0
    return conf.astype(np.uint8)


def test_seeds_without_crf_hand_case():
    # Row layout (keys 3 and 7): confident class 3; confident class 7; unsure (0.05 < max < 0.30);
    # background (max < 0.05); exactly 0.30 (fg tie → background, bg says class → unsure);
    # exactly 0.05 (both ties → background).
    cams = np.array(
        [
            [[0.80, 0.10, 0.20, 0.01, 0.30, 0.05]],
            [[0.40, 0.50, 0.10, 0.04, 0.10, 0.00]],
        ],
        dtype=np.float32,
    )
    image = np.zeros((1, 6, 3), np.uint8)
    seeds = seeds_from_cams(image, cams, [3, 7], crf=False)
    assert seeds.dtype == np.uint8 and seeds.shape == (1, 6)
    assert seeds.tolist() == [[3, 7, 255, 0, 255, 0]]


def test_seeds_without_crf_match_rule_on_random_maps():
    rng = np.random.default_rng(4)
    cams = (rng.random((3, 20, 24)) ** 3).astype(np.float32)
    keys = np.array([1, 4, 15])
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    seeds = seeds_from_cams(image, cams, keys, crf=False, fg_threshold=0.3, bg_threshold=0.05)
    np.testing.assert_array_equal(seeds, _seed_rule(cams, keys, 0.3, 0.05))
    assert {0, 255}.issubset(set(np.unique(seeds).tolist()))


def test_seeds_no_classes_all_background():
    image = np.zeros((5, 6, 3), np.uint8)
    for crf in (False, True):  # K = 0 never calls the CRF
        seeds = seeds_from_cams(image, np.zeros((0, 5, 6), np.float32), [], crf=crf)
        assert seeds.shape == (5, 6) and seeds.dtype == np.uint8 and not seeds.any()


def _two_object_scene(h=32, w=40):
    """Gray background with a red square (class 3) and a blue square (class 7), plus CAMs."""
    image = np.full((h, w, 3), 128, np.uint8)
    image[4:16, 4:16] = (220, 30, 30)
    image[16:28, 22:36] = (30, 30, 220)
    cams = np.zeros((2, h, w), np.float32)
    cams[0, 4:16, 4:16] = 0.9
    cams[0, 2:18, 2:18] += 0.1  # weak halo → unsure band
    cams[1, 16:28, 22:36] = 0.8
    return image, cams


def test_seeds_with_crf_valid_and_snapped_to_edges():
    pytest.importorskip("pydensecrf.densecrf")
    image, cams = _two_object_scene()
    before_img, before_cams = image.copy(), cams.copy()
    seeds = seeds_from_cams(image, cams, np.array([3, 7]), crf=True)
    assert seeds.shape == (32, 40) and seeds.dtype == np.uint8
    assert set(np.unique(seeds).tolist()) <= {0, 3, 7, 255}
    # Without the CRF the weak halo around the red square is unsure (255); the label CRF snaps
    # both passes to the colour edges, so the seeds become exactly the two objects.
    plain = seeds_from_cams(image, cams, np.array([3, 7]), crf=False)
    assert (plain[2:18, 2:18][plain[2:18, 2:18] != 3] == 255).all()
    expected = np.zeros((32, 40), np.uint8)
    expected[4:16, 4:16] = 3
    expected[16:28, 22:36] = 7
    np.testing.assert_array_equal(seeds, expected)
    np.testing.assert_array_equal(image, before_img)
    np.testing.assert_array_equal(cams, before_cams)


def test_seeds_crf_kwargs_reach_the_crf():
    pytest.importorskip("pydensecrf.densecrf")
    image, cams = _two_object_scene()
    # With zero pairwise weights the label CRF is the identity, so the seeds equal the plain rule.
    no_pairwise = {"gaussian_compat": 0, "bilateral_compat": 0}
    seeds = seeds_from_cams(image, cams, [3, 7], crf=True, crf_kwargs=no_pairwise)
    np.testing.assert_array_equal(seeds, seeds_from_cams(image, cams, [3, 7], crf=False))


def test_seeds_accept_tensors():
    image, cams = _two_object_scene()
    seeds = seeds_from_cams(
        torch.from_numpy(image), torch.from_numpy(cams), torch.tensor([3, 7]), crf=False
    )
    np.testing.assert_array_equal(seeds, seeds_from_cams(image, cams, [3, 7], crf=False))
