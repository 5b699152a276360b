"""AuxSegNet math: affinities, propagation, fusion, label-update rules, saliency CRF, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.ops.cross_task_affinity import (
    auxsegnet_losses,
    embedded_gaussian_affinity,
    fuse_affinities,
    fuse_cam_saliency,
    propagate,
    saliency_crf,
    saliency_crf_unary,
)


def _random_affinity(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, n, n, generator=g) * 3, dim=-1)


def test_embedded_gaussian_rows_sum_to_one() -> None:
    g = torch.Generator().manual_seed(0)
    theta, phi = torch.randn(2, 8, 3, 5, generator=g), torch.randn(2, 8, 3, 5, generator=g)
    a = embedded_gaussian_affinity(theta, phi)
    assert a.shape == (2, 15, 15)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 15))


def test_embedded_gaussian_known_answer() -> None:
    # Two pixels, 1-D embeddings θ = (1, 0), φ = (0, 2): row i is softmax_j(θ_i φ_j).
    theta = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    phi = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)
    a = embedded_gaussian_affinity(theta, phi)[0]
    e2 = math.exp(2.0)
    expected = torch.tensor([[1 / (1 + e2), e2 / (1 + e2)], [0.5, 0.5]])
    torch.testing.assert_close(a, expected)
    # Zero embeddings: every pixel attends uniformly.
    zero = torch.zeros(1, 4, 2, 3)
    torch.testing.assert_close(embedded_gaussian_affinity(zero, zero), torch.full((1, 6, 6), 1 / 6))


def test_embedded_gaussian_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="theta and phi"):
        embedded_gaussian_affinity(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))


def test_propagate_order_and_invariants() -> None:
    # Row i aggregates over j: out[i] = Σ_j A[i, j] x[j] (not the transpose).
    a = torch.tensor([[[1.0, 0.0], [0.25, 0.75]]])
    x = torch.tensor([2.0, 6.0]).view(1, 1, 1, 2)
    torch.testing.assert_close(propagate(a, x).flatten(), torch.tensor([2.0, 5.0]))
    aff = _random_affinity(2, 12)
    const = torch.full((2, 3, 3, 4), 0.7)
    torch.testing.assert_close(propagate(aff, const), const)  # constant maps stay constant
    y = torch.rand(2, 3, 3, 4)
    torch.testing.assert_close(propagate(torch.eye(12).expand(2, 12, 12), y), y)
    out = propagate(aff, y)  # convex combinations stay inside the input range
    assert out.min() >= y.min() - 1e-6 and out.max() <= y.max() + 1e-6
    with pytest.raises(ValueError, match="affinity must be"):
        propagate(aff, torch.rand(2, 3, 4, 4))


def test_fuse_affinities_row_sums_and_limits() -> None:
    a_seg, a_sal = _random_affinity(2, 9, 1), _random_affinity(2, 9, 2)
    stacked = torch.stack([a_seg, a_sal], dim=1)
    logits = torch.randn(2, 2, 9, 9, generator=torch.Generator().manual_seed(3))
    fused = fuse_affinities(stacked, logits)
    assert fused.shape == (2, 9, 9) and (fused >= 0).all()
    # Element-wise weights (official code): rows sum to Σ_j Σ_t w_t A_t ∈ (0, 2], not exactly 1.
    sums = fused.sum(-1)
    assert (sums > 0).all() and (sums <= 2).all() and not torch.allclose(sums, torch.ones(2, 9))
    normalized = fuse_affinities(stacked, logits, normalize=True)
    torch.testing.assert_close(normalized.sum(-1), torch.ones(2, 9))
    torch.testing.assert_close(normalized, fused / sums[..., None])
    # Weights constant along a row keep rows summing to one without renormalising.
    torch.testing.assert_close(fuse_affinities(stacked, torch.zeros_like(logits)),
                               (a_seg + a_sal) / 2)
    seg_only = torch.zeros_like(logits)
    seg_only[:, 0] = 50.0
    torch.testing.assert_close(fuse_affinities(stacked, seg_only), a_seg)


def test_fuse_cam_saliency_rules_on_hand_made_example() -> None:
    # 1 image, C = 3 classes, 2 × 4 pixels; class 3 is absent from the image labels.
    cams = torch.zeros(1, 3, 2, 4)
    cams[0, 0] = torch.tensor([[0.9, 0.9, 0.1, 0.0], [0.3, 0.7, 0.2, 0.6]])
    cams[0, 1] = torch.tensor([[0.5, 0.95, 0.0, 0.0], [0.4, 0.0, 0.0, 0.1]])
    cams[0, 2] = torch.tensor([[0.0, 0.0, 0.0, 0.99], [0.0, 0.0, 0.0, 0.99]])  # absent class
    sal = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.5, 0.06, 0.01, 0.0]]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    masks = fuse_cam_saliency(cams, sal, labels)
    # Row 0: both; both (class 2 wins); saliency only; the absent class does not count.
    # Row 1: both; CAM only (0.06 is not > 0.06); neither (0.2 is not > 0.2); CAM only.
    expected = torch.tensor([[[1, 2, 255, 255],
                              [2, 255, 0, 255]]])
    assert masks.dtype == torch.int64
    torch.testing.assert_close(masks, expected)
    # The 4-D saliency form and other thresholds.
    loose = fuse_cam_saliency(cams, sal[:, None], labels, cam_threshold=0.05,
                              saliency_threshold=0.0)
    assert loose[0, 1, 1].item() == 1 and loose[0, 1, 2].item() == 1


def test_fuse_cam_saliency_shape_check() -> None:
    with pytest.raises(ValueError, match="must agree"):
        fuse_cam_saliency(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 4), torch.ones(1, 2))


def test_saliency_crf_unary_known_values() -> None:
    s = np.array([[0.0, 0.5, 1.0]])
    u = saliency_crf_unary(s)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert u.shape == (2, 1, 3) and u.dtype == np.float32
    assert u[0, 0, 0] == pytest.approx(0.0, abs=1e-6)  # s = 0: background costs nothing
    assert u[1, 0, 0] == pytest.approx(-math.log(1e-8) / (1.05 * sig(0.0)), rel=1e-5)
    assert u[0, 0, 1] == pytest.approx(u[1, 0, 1]) == pytest.approx(
        -math.log(0.5) / (1.05 * sig(0.5)), rel=1e-5)
    assert u[1, 0, 2] == pytest.approx(0.0, abs=1e-6)


def test_saliency_crf_keeps_confident_regions() -> None:
    pytest.importorskip("pydensecrf")
    image = np.full((12, 16, 3), 120, dtype=np.uint8)
    image[:, 8:] = 200
    sal = np.full((12, 16), 0.03, dtype=np.float32)
    sal[:, 8:] = 0.97
    out = saliency_crf(image, sal)
    assert out.shape == (12, 16) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (out[:, :7] < 0.5).all() and (out[:, 9:] > 0.5).all()


def test_losses_known_answers() -> None:
    b, c, h, w = 2, 3, 4, 4
    outputs = {
        "cls": torch.zeros(b, c),
        "sal_init": torch.zeros(b, 1, 2, 2),
        "sal_refined": torch.zeros(b, 1, 2, 2),
        "seg_init": torch.zeros(b, c + 1, 2, 2),
        "seg_refined": torch.zeros(b, c + 1, 2, 2),
    }
    masks = torch.zeros(b, h, w, dtype=torch.long)
    masks[0, 0] = 255
    terms = auxsegnet_losses(outputs, labels=torch.ones(b, c), masks=masks,
                             saliency=torch.rand(b, h, w))
    assert set(terms) == {"cls", "sal_init", "sal_refined", "seg_init", "seg_refined"}
    assert terms["cls"].item() == pytest.approx(math.log(2))
    assert terms["sal_init"].item() == pytest.approx(math.log(2))
    assert terms["seg_refined"].item() == pytest.approx(math.log(c + 1))


def test_losses_binarise_saliency_ignore_255_and_skip_missing_outputs() -> None:
    # A confident saliency logit: the loss is small only if labels are binarised at 0.5.
    logit = torch.full((1, 1, 2, 2), 10.0)
    sal = torch.full((1, 2, 2), 0.6)
    low = auxsegnet_losses({"sal_init": logit}, labels=torch.ones(1, 1),
                           masks=torch.zeros(1, 2, 2, dtype=torch.long), saliency=sal)
    assert set(low) == {"sal_init"} and low["sal_init"].item() < 1e-3
    high = auxsegnet_losses({"sal_init": logit}, labels=torch.ones(1, 1),
                            masks=torch.zeros(1, 2, 2, dtype=torch.long), saliency=sal,
                            saliency_label_threshold=0.7)
    assert high["sal_init"].item() > 5
    # Ignored pixels do not count; an all-ignored batch gives 0 with a graph.
    seg = torch.zeros(1, 2, 2, 2, requires_grad=True)
    with torch.no_grad():
        seg[0, 1, 0, 0] = 20.0  # confident class 1 at (0, 0) only
    masks = torch.full((1, 2, 2), 255, dtype=torch.long)
    masks[0, 0, 0] = 1
    terms = auxsegnet_losses({"seg_init": seg}, labels=torch.ones(1, 1), masks=masks,
                             saliency=sal)
    assert terms["seg_init"].item() < 1e-6
    empty = auxsegnet_losses({"seg_init": seg}, labels=torch.ones(1, 1),
                             masks=torch.full((1, 2, 2), 255, dtype=torch.long), saliency=sal)
    assert empty["seg_init"].item() == 0.0 and empty["seg_init"].requires_grad
