"""PAMR's two propagation paths (sparse product, banded shifts) against the official formulation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsss.ops import pamr as pamr_module
from wsss.ops.pamr import local_neighbours, neighbour_index, pamr, pamr_affinity

DILATIONS = (1, 2, 4, 8, 12, 24)


def _stacked_reference(images, masks, dilations, num_iter):
    """PAMR with the (B, C, P, H, W) neighbour stack of the official code."""
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    windows = local_neighbours(images, dilations, centre=True)
    sigma = windows.std(dim=2, keepdim=True)
    diff = (local_neighbours(images, dilations) - images.unsqueeze(2)).abs()
    alpha = F.softmax((-diff / (1e-8 + 0.1 * sigma)).mean(1), dim=1).unsqueeze(1)
    for _ in range(num_iter):
        masks = (local_neighbours(masks, dilations) * alpha).sum(2)
    return masks


def _inputs(b=2, h=29, w=37, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    masks = torch.softmax(3 * torch.randn(b, c, h // 2, w // 2, generator=g), 1)
    return images, masks


def test_neighbour_index_matches_replicate_padding() -> None:
    b, h, w = 2, 7, 11
    idx = torch.arange(b * h * w, dtype=torch.float64).view(b, 1, h, w)
    expected = local_neighbours(idx, (1, 3, 8))[:, 0]  # (B, P, H, W)
    got = neighbour_index(b, h, w, (1, 3, 8)).view(b, h, w, -1).permute(0, 3, 1, 2)
    assert torch.equal(got, expected.long())


def test_affinity_matches_stacked_windows() -> None:
    images, _ = _inputs()
    windows = local_neighbours(images, DILATIONS, centre=True)
    sigma = windows.std(dim=2, keepdim=True)
    diff = (local_neighbours(images, DILATIONS) - images.unsqueeze(2)).abs()
    expected = F.softmax((-diff / (1e-8 + sigma.pow(2))).mean(1), dim=1)
    got = pamr_affinity(images, dilations=DILATIONS, kernel="paper")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_sparse_and_banded_paths_match_the_stacked_reference() -> None:
    images, masks = _inputs()
    expected = _stacked_reference(images, masks, DILATIONS, 10)
    sparse = pamr(images, masks, dilations=DILATIONS, num_iter=10)
    size = images.shape[-2:]
    up = F.interpolate(masks, size=size, mode="bilinear", align_corners=True)
    alpha = pamr_affinity(images, dilations=DILATIONS)
    banded = pamr_module._propagate_bands(up, alpha, DILATIONS, 10)
    torch.testing.assert_close(sparse, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(banded, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(sparse.argmax(1), expected.argmax(1))
    assert sparse.is_contiguous() and sparse.shape == (2, 5, 29, 37)


def test_small_row_bands_give_the_same_result(monkeypatch) -> None:
    images, masks = _inputs(b=1, h=40, w=9, c=3, seed=1)
    up = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    alpha = pamr_affinity(images, dilations=(1, 2))
    whole = pamr_module._propagate_bands(up, alpha, (1, 2), 3)
    monkeypatch.setattr(pamr_module, "_row_bands",
                        lambda h, row_bytes: [slice(y, min(y + 3, h)) for y in range(0, h, 3)])
    banded = pamr_module._propagate_bands(up, alpha, (1, 2), 3)
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-6)


def test_gradient_flows_through_the_banded_path() -> None:
    images, masks = _inputs(b=1, h=12, w=14, c=3)
    masks = masks.clone().requires_grad_(True)
    out = pamr(images, masks, dilations=(1, 2), num_iter=2)
    out[:, 1].sum().backward()
    assert masks.grad is not None and torch.isfinite(masks.grad).all()
    with torch.no_grad():
        torch.testing.assert_close(out, pamr(images, masks, dilations=(1, 2), num_iter=2))


def test_thread_count_is_restored() -> None:
    threads = torch.get_num_threads()
    images, masks = _inputs(b=1, h=10, w=10, c=2)
    pamr(images, masks, dilations=(1,), num_iter=1)
    assert torch.get_num_threads() == threads
