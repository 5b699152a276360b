"""PAMR: constant masks stay constant, distributions stay distributions, uniform images average."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss.ops.pamr import PAMR, local_neighbours, pamr, pamr_affinity

DILATIONS = (1, 2, 4, 8, 12, 24)


def _images(b: int = 2, h: int = 20, w: int = 24) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_constant_mask_stays_constant() -> None:
    masks = torch.full((2, 3, 20, 24), 0.37)
    out = pamr(_images(), masks, dilations=DILATIONS, num_iter=10)
    assert out.shape == masks.shape
    torch.testing.assert_close(out, masks)


def test_returns_distributions_within_input_range() -> None:
    logits = torch.randn(2, 4, 10, 12, generator=torch.Generator().manual_seed(1))
    masks = F.softmax(logits, dim=1)
    out = pamr(_images(), masks, dilations=DILATIONS, num_iter=10)
    assert out.shape == (2, 4, 20, 24)  # resized to the image
    torch.testing.assert_close(out.sum(1), torch.ones(2, 20, 24))
    assert out.min() >= 0 and out.max() <= 1


def test_affinity_is_a_distribution_over_48_neighbours() -> None:
    alpha = pamr_affinity(_images(), dilations=DILATIONS)
    assert alpha.shape == (2, 48, 20, 24)
    assert alpha.min() >= 0
    torch.testing.assert_close(alpha.sum(1), torch.ones(2, 20, 24))


@pytest.mark.parametrize("kernel", ["code", "paper"])
def test_uniform_image_is_plain_neighbourhood_averaging(kernel: str) -> None:
    images = torch.full((1, 3, 16, 18), 0.5)
    masks = torch.rand(1, 2, 16, 18, generator=torch.Generator().manual_seed(2))
    dilations = (1, 3)
    out = pamr(images, masks, dilations=dilations, num_iter=2, kernel=kernel)
    expected = masks
    for _ in range(2):  # mean over the 16 replicate-padded neighbours, centre excluded
        expected = local_neighbours(expected, dilations).mean(2)
    torch.testing.assert_close(out, expected)


def test_neighbour_order_and_replicate_padding() -> None:
    x = torch.arange(25.0).view(1, 1, 5, 5)
    nb = local_neighbours(x, (1,))
    assert nb.shape == (1, 1, 8, 5, 5)
    # pixel (2, 2) = 12: neighbours in the official order, (-1,-1) first, (1,1) last
    assert nb[0, 0, :, 2, 2].tolist() == [6, 7, 8, 11, 13, 16, 17, 18]
    assert nb[0, 0, 0, 0, 0].item() == 0  # replicate padding at the corner


def test_edges_are_respected() -> None:
    # Two flat regions: a mask spreads within a region, not across the edge.
    images = torch.zeros(1, 3, 12, 12)
    images[..., 6:] = 1.0
    images += 0.01 * torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(1, 2, 12, 12)
    masks[:, 0, :, :6] = 1.0
    masks[:, 1, :, 6:] = 1.0
    masks[:, :, 5, 5] = torch.tensor([0.5, 0.5])  # a noisy pixel on the left side
    out = pamr(images, masks, dilations=(1, 2), num_iter=5)
    assert out[0, 0, 5, 5] > 0.9
    assert out[0, 1, :, 7:].min() > 0.99


def test_module_matches_function_and_preserves_dtype() -> None:
    images, masks = _images(1, 8, 8), torch.rand(1, 3, 8, 8, dtype=torch.float64)
    module = PAMR(dilations=(1, 2), num_iter=3)
    out = module(images, masks)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, pamr(images, masks, dilations=(1, 2), num_iter=3))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        pamr(_images(), torch.rand(3, 2, 4, 4))
    with pytest.raises(ValueError):
        pamr_affinity(_images(), kernel="bogus")  # type: ignore[arg-type]
