"""Tests for wsss.ops.crf: dense CRF on probabilities and labels, presets, batching."""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("pydensecrf.densecrf")

from wsss.ops.crf import CRF_PRESETS, dense_crf, dense_crf_batch, dense_crf_labels

NO_PAIRWISE = {"gaussian_compat": 0, "bilateral_compat": 0}


def _random_probs(rng, c, h, w):
    p = rng.random((c, h, w)).astype(np.float32) + 1e-3
    return p / p.sum(0, keepdims=True)


def _two_region_scene(h=32, w=48, flip_rate=0.25, seed=0):
    """Left half red (label 0), right half blue (label 1), labels/unary corrupted at random."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 40, 40)
    image[:, w // 2 :] = (40, 40, 200)
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2 :] = 1
    flips = rng.random((h, w)) < flip_rate
    noisy = np.where(flips, 1 - truth, truth)
    probs = np.stack([np.where(noisy == 0, 0.65, 0.35), np.where(noisy == 1, 0.65, 0.35)])
    return image, truth, noisy, probs.astype(np.float32)


def _label_changes(labels):
    return int((labels[1:] != labels[:-1]).sum() + (labels[:, 1:] != labels[:, :-1]).sum())


# --- dense_crf -----------------------------------------------------------------------------


def test_dense_crf_zero_pairwise_keeps_unary_argmax():
    rng = np.random.default_rng(0)
    probs = _random_probs(rng, 4, 24, 32)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    q = dense_crf(image, probs, **NO_PAIRWISE)
    np.testing.assert_array_equal(q.argmax(0), probs.argmax(0))
    # Without pairwise terms the posterior is the normalised (clipped) input.
    np.testing.assert_allclose(q, probs / probs.sum(0), atol=1e-5)


def test_dense_crf_output_is_a_distribution():
    rng = np.random.default_rng(1)
    probs = rng.random((3, 20, 28)).astype(np.float64)  # unnormalised, float64, zeros allowed
    probs[0, :5] = 0.0
    image = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    q = dense_crf(image, probs)
    assert q.shape == (3, 20, 28) and q.dtype == np.float32
    assert np.isfinite(q).all() and (q >= 0).all()
    np.testing.assert_allclose(q.sum(0), np.ones((20, 28)), atol=1e-5)


def test_dense_crf_cleans_noise_on_flat_regions():
    image, truth, noisy, probs = _two_region_scene()
    q = dense_crf(image, probs)
    pred = q.argmax(0)
    assert _label_changes(pred) < _label_changes(noisy) // 4
    assert (pred != truth).mean() < (noisy != truth).mean() / 4


def test_dense_crf_accepts_tensors_and_strided_images_without_mutation():
    rng = np.random.default_rng(2)
    probs = _random_probs(rng, 3, 16, 16)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    flipped = image[:, ::-1]  # non-contiguous view
    probs_before, image_before = probs.copy(), image.copy()
    q_np = dense_crf(np.ascontiguousarray(flipped), probs)
    q_t = dense_crf(torch.from_numpy(np.ascontiguousarray(flipped)), torch.from_numpy(probs))
    q_view = dense_crf(flipped, probs)
    np.testing.assert_array_equal(q_np, q_t)
    np.testing.assert_array_equal(q_np, q_view)
    np.testing.assert_array_equal(probs, probs_before)
    np.testing.assert_array_equal(image, image_before)


def test_crf_functions_accept_read_only_arrays():
    """`np.asarray(PIL image)` is read-only; pydensecrf rejects read-only buffers, so the
    functions copy them (issue 20, item 6) and give the same result as on writable copies."""
    from PIL import Image

    from wsss.ops.crf import dense_crf_energies

    rng = np.random.default_rng(3)
    image = np.asarray(Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)))
    assert not image.flags.writeable
    probs = _random_probs(rng, 3, 16, 20)
    labels = rng.integers(0, 3, (16, 20))
    frozen_probs, frozen_labels = probs.copy(), labels.copy()
    unary = -np.log(probs)
    frozen_unary = unary.copy()
    for a in (frozen_probs, frozen_labels, frozen_unary):
        a.setflags(write=False)
    np.testing.assert_array_equal(dense_crf(image, frozen_probs), dense_crf(image.copy(), probs))
    np.testing.assert_array_equal(dense_crf_labels(image, frozen_labels, num_labels=3),
                                  dense_crf_labels(image.copy(), labels, num_labels=3))
    np.testing.assert_array_equal(dense_crf_energies(image, frozen_unary, **CRF_PRESETS["psa"]),
                                  dense_crf_energies(image.copy(), unary, **CRF_PRESETS["psa"]))


def test_dense_crf_rejects_bad_shapes():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        dense_crf(image, np.ones((2, 8, 9), np.float32))
    with pytest.raises(ValueError):
        dense_crf(image.astype(np.float32), np.ones((2, 8, 8), np.float32))
    with pytest.raises(ValueError):
        dense_crf(image[..., :1], np.ones((2, 8, 8), np.float32))


# --- dense_crf_labels ----------------------------------------------------------------------


def test_dense_crf_labels_zero_pairwise_returns_input():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, (24, 30))
    image = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    before = labels.copy()
    out = dense_crf_labels(image, labels, num_labels=5, **NO_PAIRWISE)
    assert out.dtype == np.int64 and out.shape == (24, 30)
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_array_equal(labels, before)


def test_dense_crf_labels_cleans_noise_on_flat_regions():
    image, truth, noisy, _ = _two_region_scene(flip_rate=0.2, seed=5)
    out = dense_crf_labels(image, noisy, num_labels=2)
    assert _label_changes(out) < _label_changes(noisy) // 4
    assert (out != truth).mean() < (noisy != truth).mean() / 4


def test_dense_crf_labels_single_label_and_errors():
    image = np.zeros((6, 7, 3), np.uint8)
    out = dense_crf_labels(image, np.zeros((6, 7), np.uint8), num_labels=1)
    assert out.dtype == np.int64 and not out.any()
    with pytest.raises(ValueError):
        dense_crf_labels(image, np.full((6, 7), 3), num_labels=3)
    with pytest.raises(ValueError):
        dense_crf_labels(image, np.zeros((6, 7)), num_labels=2)  # float labels
    with pytest.raises(ValueError):
        dense_crf_labels(image, np.zeros((6, 7), np.int64), num_labels=2, gt_prob=1.0)


# --- presets, batching, import errors ------------------------------------------------------


# (num_iter, gaussian sxy, compat, bilateral sxy, srgb, compat) from evaluation.md §4.
REFERENCE_TABLE = {
    "irn_seeds": (10, 3, 3, 50, 5, 10),
    "psa": (10, 3, 3, 80, 13, 10),
    "deeplab": (1, 3, 3, 32, 13, 10),
    "auxsegnet": (10, 4, 3, 83, 5, 3),
}
PRESET_KEYS = (
    "num_iter",
    "gaussian_sxy",
    "gaussian_compat",
    "bilateral_sxy",
    "bilateral_srgb",
    "bilateral_compat",
)


def test_presets_match_the_reference_table():
    expected = {name: dict(zip(PRESET_KEYS, row)) for name, row in REFERENCE_TABLE.items()}
    assert expected == CRF_PRESETS


def test_defaults_equal_presets():
    def defaults(fn):
        return {
            k: p.default
            for k, p in inspect.signature(fn).parameters.items()
            if k in CRF_PRESETS["psa"]
        }

    assert defaults(dense_crf) == CRF_PRESETS["psa"]
    assert defaults(dense_crf_labels) == CRF_PRESETS["irn_seeds"]


@pytest.mark.parametrize("name", sorted(CRF_PRESETS))
def test_every_preset_runs(name):
    image, _, _, probs = _two_region_scene(h=16, w=20)
    q = dense_crf(image, probs, **CRF_PRESETS[name])
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    labels = dense_crf_labels(image, probs.argmax(0), num_labels=2, **CRF_PRESETS[name])
    assert labels.shape == (16, 20)


def test_dense_crf_batch_parallel_equals_sequential():
    rng = np.random.default_rng(6)
    sizes = [(16, 20), (24, 18), (20, 20), (18, 26)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    probs = [_random_probs(rng, 3, h, w) for h, w in sizes]
    probs[1] = torch.from_numpy(probs[1])
    sequential = [dense_crf(im, p, num_iter=5) for im, p in zip(images, probs)]
    batched = dense_crf_batch(images, probs, workers=1, num_iter=5)
    parallel = dense_crf_batch(images, probs, workers=2, num_iter=5)
    assert len(parallel) == len(sequential)
    for s, b, p in zip(sequential, batched, parallel):
        np.testing.assert_array_equal(s, b)
        np.testing.assert_array_equal(s, p)


def test_dense_crf_batch_rejects_mismatch():
    with pytest.raises(ValueError):
        dense_crf_batch([np.zeros((4, 4, 3), np.uint8)], [])
    with pytest.raises(ValueError):
        dense_crf_batch([], [], workers=0)


def test_missing_backend_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32))
