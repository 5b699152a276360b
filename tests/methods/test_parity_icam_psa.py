"""Parity with the official ICAM (arvijj/icam @5f04fdc), HFPL (arvijj/hfpl @1038a68) and PSA
(jiwoon-ahn/psa @9493e59) code.

Each test loads `tests/fixtures/parity/icam_psa/<name>.npz` (inputs and official outputs, made by
`tests/fixtures/parity/make_icam_psa.py`, whose docstring says how) and compares wsss's output
on the same inputs.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.config import load_config
from wsss.methods import build_method
from wsss.methods.affinitynet import (
    AffinityNetConfig,
    _window_radius,
    affinity_walk,
    affinitynet_scores,
)
from wsss.models.seam import pixel_correlation
from wsss.ops.affinity import (
    PathIndex,
    affinity_labels,
    background_stack,
    feature_pair_affinity,
    neighbour_pairs,
    pooled_affinity_labels,
)
from wsss.ops.crf import dense_crf
from wsss.ops.importance_sampling import feature_similarity_loss, max_norm, probs_to_logits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "icam_psa"


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    assert meta["repo"] == "arvijj/icam" and meta["commit"].startswith("5f04fdc")
    return arrays


def _fsl(x: np.ndarray, logits: np.ndarray, **kwargs) -> tuple[float, np.ndarray]:  # noqa: ANN003
    z = torch.tensor(logits, requires_grad=True)
    loss = feature_similarity_loss(torch.tensor(x), torch.softmax(z, 1), mu=2.5, sigma=5.0,
                                   **kwargs)
    loss.backward()
    return loss.item(), z.grad.numpy()


def test_fsl_value_and_gradient_match_the_official_all_pairs_sum() -> None:
    d = _load("fsl")
    loss, grad = _fsl(d["x"], d["logits"])
    assert loss == pytest.approx(float(d["loss"]), rel=1e-6)
    np.testing.assert_allclose(grad, d["grad_logits"], rtol=1e-5, atol=1e-9)
    # the local window (the former default, ⌈3σ⌉ = 15) is measurably off the official value
    windowed, _ = _fsl(d["x"], d["logits"], radius=15)
    assert abs(windowed / float(d["loss"]) - 1) > 1e-4


def test_fsl_half_gate_matches_hfpl() -> None:
    d = _load("fsl")
    loss, grad = _fsl(d["x"], d["logits"], half_gate=True)
    assert loss == pytest.approx(float(d["hfpl_loss"]), rel=1e-6)
    np.testing.assert_allclose(grad, d["hfpl_grad_logits"], rtol=1e-5, atol=1e-9)


def _official_directions(radius: int) -> list[tuple[int, int]]:
    """PSA's `search_dist` order (the rows of the official label and affinity arrays)."""
    dirs = [(0, x) for x in range(1, radius)]
    return dirs + [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius)
                   if x * x + y * y < radius * radius]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_affinity_training_labels_match_psa_pooled_cells(seed: int) -> None:
    d = _load("aff_labels")
    crop = torch.from_numpy(d["crop_" + str(seed)].astype(np.int64))  # source row/col + 1
    inside = crop[..., 0] > 0
    scores = torch.from_numpy(np.concatenate([d["low"], d["high"]]))
    cropped = torch.zeros((scores.shape[0], *crop.shape[:2]))
    cropped[:, inside] = scores[:, crop[..., 0][inside] - 1, crop[..., 1][inside] - 1]
    k = d["low"].shape[0]
    labels = pooled_affinity_labels(cropped[:k], cropped[k:], torch.from_numpy(d["keys"]), 8)
    assert labels.shape == (16, 16)
    assert {0, 255} < set(labels.unique().tolist())  # background, unsure and classes occur
    index = PathIndex.build(5, (16, 16))
    ours = affinity_labels(labels, index)
    rows = [index.directions.tolist().index(list(dir_)) for dir_ in _official_directions(5)]
    for name, value in zip(("bg", "fg", "neg"), ours):
        np.testing.assert_array_equal(value[rows].numpy(), d[f"{name}_{seed}"], err_msg=name)


def test_affinity_radius_and_dense_matrix_match_icam_on_small_maps() -> None:
    d = _load("affinity")
    for h, w in d["sizes"].tolist():
        features = torch.from_numpy(d[f"x_{h}x{w}"])[0]
        radius = _window_radius(5, (h, w))
        assert len(_official_directions(radius)) == int(d[f"directions_{h}x{w}"])
        src, dst = neighbour_pairs((h, w), radius, window=True)
        affinity = feature_pair_affinity(features, src, dst)
        dense = torch.zeros(h * w, h * w)
        dense[src, dst] = affinity
        dense[dst, src] = affinity
        dense += torch.eye(h * w)
        np.testing.assert_allclose(dense.numpy(), d[f"dense_{h}x{w}"], rtol=1e-6, atol=1e-7,
                                   err_msg=f"{h}x{w}")


def test_probutils_and_max_norm_match_icam() -> None:
    d = _load("probutils")
    torch.testing.assert_close(probs_to_logits(torch.tensor(d["p"])),
                               torch.tensor(d["logits"]), rtol=1e-12, atol=1e-12)
    probs = torch.softmax(torch.tensor(d["z"]), 1)
    torch.testing.assert_close(probs, torch.tensor(d["sm_probs"]))
    # ICAM's GMP prediction (`pooling: max`) is `softmax_maxpool`'s logits
    torch.testing.assert_close(probs_to_logits(probs.amax((2, 3), keepdim=True)),
                               torch.tensor(d["sm_logits"]))
    torch.testing.assert_close(max_norm(torch.tensor(d["z"])), torch.tensor(d["max_norm"]))


def test_pcm_matches_icam() -> None:
    d = _load("pcm")
    cam = torch.nn.functional.interpolate(torch.from_numpy(d["cam"]), size=(5, 6),
                                          mode="bilinear", align_corners=True)
    ours = pixel_correlation(cam, torch.from_numpy(d["f_proj"]))
    torch.testing.assert_close(ours, torch.from_numpy(d["cam_rv"]), rtol=1e-5, atol=1e-6)


def test_affinity_label_scores_match_psa_crf_with_alpha() -> None:
    with np.load(FIXTURES / "crf.npz") as data:
        d = {k: data[k] for k in data.files}
    assert json.loads(str(d["meta"]))["repo"] == "jiwoon-ahn/psa"
    cams = torch.from_numpy(d["cams"])
    for alpha in (4, 32):
        torch.testing.assert_close(background_stack(cams, alpha),
                                   torch.from_numpy(d[f"probs_{alpha}"]))
        np.testing.assert_allclose(dense_crf(d["image"], d[f"probs_{alpha}"]), d[f"crf_{alpha}"],
                                   rtol=1e-5, atol=1e-6)
    low, high, keys = affinitynet_scores(d["image"], d["cams"], np.array([3, 8]), low_alpha=4,
                                         high_alpha=32, crf=True)
    assert keys.tolist() == [0, 3, 8]
    np.testing.assert_allclose(low, d["crf_4"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(high, d["crf_32"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("merge", ["image", "strided"])
def test_psa_classifier_cams_match_infer_cls(merge: str) -> None:
    """`cam_affinitynet`'s CAMs on ResNet-38 with the fixture's deterministic weights equal
    PSA's `infer_cls.py` (views upsampled to the image and summed); IRN's merge does not."""
    spec = importlib.util.spec_from_file_location("make_icam_psa",
                                                  FIXTURES.parent / "make_icam_psa.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    with np.load(FIXTURES / "psa_cam.npz") as data:
        d = {k: data[k] for k in data.files}
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/voc/cam_affinitynet.yaml",
                      ["model.pretrained=none", "pipeline.device=cpu", "pipeline.winograd=false",
                       f"method.cam_merge={merge}"])
    method = build_method(cfg)
    model = method.build_model(num_classes=20)
    state = {name: torch.from_numpy(maker.synthetic_weight(name, tuple(t.shape)))
             for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        cams, keys = method.infer_cams(model.eval(), d["image"], d["label"])
    present = np.flatnonzero(d["label"])
    assert keys.tolist() == (present + 1).tolist()
    expected = d["norm_cam"][present]
    if merge == "image":
        np.testing.assert_allclose(cams, expected, rtol=1e-4, atol=2e-5)
    else:
        assert np.abs(cams - expected).max() > 1e-3


class _StoredFeatures(torch.nn.Module):
    """AffinityNet stand-in returning the fixture's features (the official network's output)."""

    output_stride = 8

    def __init__(self, features: np.ndarray) -> None:
        super().__init__()
        self.features = torch.from_numpy(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-2:] == (8 * self.features.shape[-2], 8 * self.features.shape[-1])
        return self.features[None]


@pytest.mark.parametrize("walk_tol", [0.0, 1e-6])
def test_random_walk_matches_psa_infer_aff(walk_tol: float) -> None:
    with np.load(FIXTURES / "walk.npz") as data:
        d = {k: data[k] for k in data.files}
    assert json.loads(str(d["meta"]))["repo"] == "jiwoon-ahn/psa"
    cfg = AffinityNetConfig(walk_alpha=16.0, beta=8.0, num_steps=8, walk_tol=walk_tol,
                            walk_pairs="window")
    image = np.zeros((*d["cams"].shape[-2:], 3), dtype=np.uint8)
    with torch.no_grad():
        mask, _, _ = affinity_walk(_StoredFeatures(d["features"]), image, d["cams"],
                                   d["classes"] + 1, cfg=cfg, device=torch.device("cpu"))
    assert len(np.unique(d["res"])) == 3
    np.testing.assert_array_equal(mask, d["res"])
