"""Importance sampling, probs_to_logits, the feature similarity loss and SEAM's loss helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.ops.importance_sampling import (
    adaptive_min_pooling_loss,
    feature_similarity_loss,
    importance_sample,
    max_norm,
    max_onehot,
    probs_to_logits,
    sample_indices,
)


def test_probs_to_logits_known_values() -> None:
    out = probs_to_logits(torch.tensor([0.0, 0.5, 1.0]))
    assert out[0].item() == pytest.approx(math.log(1e-3), abs=1e-5)
    assert out[1].item() == pytest.approx(0.0, abs=1e-6)
    assert out[2].item() == pytest.approx(-math.log(1e-3), abs=1e-4)  # log(1) − log(1e-3)


def test_sampling_frequencies_converge_to_the_pmf() -> None:
    gen = torch.Generator().manual_seed(0)
    weights = torch.tensor([[0.0, 1.0], [2.0, 5.0]])[None, None]  # pmf 0, 1/8, 2/8, 5/8
    counts = torch.bincount(sample_indices(weights, 200_000, generator=gen).flatten(),
                            minlength=4).double()
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.0, 1 / 8, 2 / 8, 5 / 8], dtype=torch.float64),
                          atol=4e-3)
    assert counts[0] == 0  # a zero-probability pixel is never drawn


def test_each_channel_uses_its_own_pmf() -> None:
    gen = torch.Generator().manual_seed(1)
    weights = torch.zeros(2, 3, 4, 4)
    for b in range(2):
        for c in range(3):
            weights[b, c].view(-1)[b * 3 + c] = 1.0  # a single admissible pixel per map
    idx = sample_indices(weights, 7, generator=gen)
    expected = torch.arange(6).reshape(2, 3, 1).expand(2, 3, 7)
    assert torch.equal(idx, expected)


def test_samples_are_values_of_the_map_and_carry_the_gradient() -> None:
    gen = torch.Generator().manual_seed(2)
    values = torch.rand(2, 3, 5, 5, requires_grad=True)
    samples = importance_sample(values, values.detach() + 0.1, 50, generator=gen)
    assert samples.shape == (2, 3, 50)
    flat = values.detach().flatten(2)
    assert all(bool((flat[b, c] == s).any()) for b in range(2) for c in range(3)
               for s in samples[b, c])
    samples.sum().backward()
    # d(sum of samples)/d(value) = how often that pixel was drawn: integers summing to 50 per map
    grad = values.grad.flatten(2)
    assert torch.equal(grad, grad.round()) and torch.all(grad.sum(-1) == 50)


def test_uniform_weights_sampling_equals_gap_in_expectation() -> None:
    gen = torch.Generator().manual_seed(3)
    values = torch.rand(1, 2, 6, 6, generator=gen)
    samples = importance_sample(values, torch.ones_like(values), 100_000, generator=gen)
    assert torch.allclose(samples.mean(-1), values.mean((2, 3)), atol=5e-3)


def test_uniform_cams_sampling_loss_equals_the_gap_loss() -> None:
    probs = torch.full((2, 3, 4, 4), 0.3)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    sampled = probs_to_logits(importance_sample(probs, probs, 5))
    pooled = probs_to_logits(probs.mean((2, 3)))
    loss_s = F.binary_cross_entropy_with_logits(sampled, labels[:, :, None].expand_as(sampled))
    loss_p = F.multilabel_soft_margin_loss(pooled, labels)
    assert loss_s.item() == pytest.approx(loss_p.item(), abs=1e-6)


def test_all_zero_weights_are_drawn_uniformly() -> None:
    gen = torch.Generator().manual_seed(4)
    counts = torch.bincount(sample_indices(torch.zeros(1, 1, 2, 2), 40_000,
                                           generator=gen).flatten(), minlength=4)
    assert torch.allclose(counts.double() / 40_000, torch.full((4,), 0.25, dtype=torch.float64),
                          atol=0.015)
    with pytest.raises(ValueError, match="num_samples"):
        sample_indices(torch.ones(1, 1, 2, 2), 0)


def _fsl_reference(images, probs, mu, sigma, half_gate=False, normalization="code"):
    """All ordered pairs (i, j) of each image, O((hw)²), as `probutils.feature_similarity_loss`."""
    b, k, h, w = probs.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], 1).double()
    d2 = torch.cdist(coords, coords) ** 2
    weight = torch.exp(-d2 / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)
    total = 0.0
    for n in range(b):
        x = images[n].flatten(1).T.double()
        a = probs[n].flatten(1).T.double()
        delta = (torch.cdist(x, x, p=1) / 3).clamp(0, 1)
        f = torch.tanh(mu + torch.log((delta + 1e-5) / (1 - delta + 1e-5)))
        g = torch.cdist(a, a) ** 2
        if half_gate:
            g = g / 2
        total = total + (weight * g * f).sum()
    norm = b * h * w if normalization == "code" else b * (h * w) ** 2
    return -total / norm


@pytest.mark.parametrize("half_gate,normalization", [(False, "code"), (True, "paper")])
def test_fsl_matches_the_all_pairs_definition(half_gate: bool, normalization: str) -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    probs = torch.softmax(torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64), 1)
    ours = feature_similarity_loss(images, probs, mu=1.5, sigma=1.2, radius=10,
                                   half_gate=half_gate, normalization=normalization)
    ref = _fsl_reference(images, probs, 1.5, 1.2, half_gate, normalization)
    assert ours.dtype == torch.float64
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("chunk_elements", [7, 1 << 24])  # 7: one row block per 7 entries
def test_fsl_default_is_all_pairs_in_value_and_gradient(chunk_elements: int) -> None:
    gen = torch.Generator().manual_seed(8)
    images = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    logits = torch.randn(2, 4, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    ours = feature_similarity_loss(images, torch.softmax(logits, 1), mu=mu, sigma=2.0,
                                   chunk_elements=chunk_elements)
    grads = torch.autograd.grad(ours, (logits, mu))
    ref = _fsl_reference(images, torch.softmax(logits, 1), mu, 2.0)
    ref_grads = torch.autograd.grad(ref, (logits, mu))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12)
    # the window form leaves out the far pairs: smaller in magnitude, and not the official value
    windowed = feature_similarity_loss(images, torch.softmax(logits, 1), mu=2.5, sigma=2.0,
                                       radius=2)
    assert abs(windowed.item() - ref.item()) > 1e-3 * abs(ref.item())


def test_fsl_is_nonnegative_for_similar_pixels_and_zero_for_equal_predictions() -> None:
    images = torch.full((1, 3, 6, 6), 0.4)  # every pair similar: δ = 0, f ≈ −1
    probs = torch.softmax(torch.randn(1, 3, 6, 6), 1)
    loss = feature_similarity_loss(images, probs, mu=2.5, sigma=1.0)
    assert loss.item() > 0
    same = feature_similarity_loss(images, torch.full((1, 3, 6, 6), 1 / 3), mu=2.5, sigma=1.0)
    assert same.item() == 0.0
    # dissimilar pixels (δ = 1, f ≈ +1) with different predictions: a reward (negative loss)
    checker = ((torch.arange(6)[:, None] + torch.arange(6)[None]) % 2).float()
    images = checker.expand(1, 3, 6, 6)
    probs = torch.stack([checker, 1 - checker], 0)[None]
    assert feature_similarity_loss(images, probs, mu=2.5, sigma=1.0).item() < 0


def test_fsl_gradient_vanishes_where_predictions_are_equal() -> None:
    gen = torch.Generator().manual_seed(6)
    images = torch.rand(1, 3, 12, 12, generator=gen)
    probs = torch.full((1, 2, 12, 12), 0.5)
    probs[0, 0, :, :3], probs[0, 1, :, :3] = 0.9, 0.1  # a different strip at the left edge
    probs.requires_grad_(True)
    feature_similarity_loss(images, probs, mu=2.5, sigma=1.0, radius=3).backward()
    grad = probs.grad[0].abs().sum(0)
    assert grad[:, :6].sum() > 0  # the strip and its neighbours within the radius
    assert torch.all(grad[:, 6:] == 0)  # every neighbour of these pixels predicts the same
    uniform = torch.full((1, 2, 12, 12), 0.5, requires_grad=True)
    feature_similarity_loss(images, uniform, mu=2.5, sigma=1.0, radius=3).backward()
    assert torch.all(uniform.grad == 0)
    # all pairs: the expanded norms cancel up to float rounding
    uniform = torch.full((1, 2, 12, 12), 0.5, requires_grad=True)
    feature_similarity_loss(images, uniform, mu=2.5, sigma=1.0).backward()
    assert uniform.grad.abs().max() < 1e-7


def test_fsl_learned_parameters_receive_gradients() -> None:
    images = torch.rand(1, 3, 6, 6)
    probs = torch.softmax(torch.randn(1, 3, 6, 6), 1)
    mu = torch.tensor(2.5, requires_grad=True)
    log_sigma = torch.tensor(0.0, requires_grad=True)
    feature_similarity_loss(images, probs, mu=mu, sigma=log_sigma.exp()).backward()
    assert mu.grad is not None and mu.grad.abs() > 0
    assert log_sigma.grad is not None and log_sigma.grad.abs() > 0


def test_fsl_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="share batch and spatial size"):
        feature_similarity_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 5, 4))
    with pytest.raises(ValueError, match="normalization"):
        feature_similarity_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4),
                                normalization="mean")


def test_max_norm_maps_each_channel_to_unit_range() -> None:
    cams = torch.tensor([[[[-1.0, 0.5], [1.0, 3.0]]]])
    out = max_norm(cams)
    assert out.min().item() == 0.0
    assert out.max().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0, 0, 1].item() == pytest.approx((0.5 - 1e-5) / (3 + 1e-5), rel=1e-6)


def test_max_onehot_keeps_background_and_the_per_pixel_max() -> None:
    cams = torch.tensor([0.7, 0.2, 0.5, 0.1]).reshape(1, 4, 1, 1)
    out = max_onehot(cams)
    assert out.flatten().tolist() == pytest.approx([0.7, 0.0, 0.5, 0.0])
    assert cams.flatten().tolist() == pytest.approx([0.7, 0.2, 0.5, 0.1])  # input not mutated


def test_adaptive_min_pooling_loss_known_answer() -> None:
    fg = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])  # max over channels = these; k = 4 // 4 = 1
    cams = torch.stack([fg, fg - 5.0])[None]
    assert adaptive_min_pooling_loss(cams).item() == 0.0  # the smallest (−3) after ReLU
    assert adaptive_min_pooling_loss(cams + 4.0).item() == pytest.approx(1.0)
