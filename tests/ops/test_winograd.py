"""Winograd F(4x4, 3x3): equals the direct 3x3 convolution, transforms are the F(4, 3) algorithm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.ops import winograd
from wsss.ops.winograd import (WinogradConv2d, winograd_conv3x3, winograd_transforms,
                               winograd_weight)


@pytest.mark.parametrize("size", [(8, 8), (13, 18), (1, 5), (4, 9)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_the_direct_convolution(size, with_bias) -> None:
    # Sizes that are and are not whole numbers of 4x4 tiles, down to a single row.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, *size, generator=g)
    w = torch.randn(5, 6, 3, 3, generator=g)
    b = torch.randn(5, generator=g) if with_bias else None
    expected = F.conv2d(x, w, b, padding=1)
    got = winograd_conv3x3(x.permute(0, 2, 3, 1), winograd_weight(w), b)
    assert got.shape == (2, *size, 5) and got.is_contiguous()
    torch.testing.assert_close(got.permute(0, 3, 1, 2), expected, rtol=0,
                               atol=5e-5 * float(expected.abs().max()))


def test_float64_is_exact_to_rounding() -> None:
    # The algorithm is exact in exact arithmetic: in float64 the error is ~1e-13, not ~1e-5.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 11, 7, dtype=torch.float64, generator=g)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=g)
    got = winograd_conv3x3(x.permute(0, 2, 3, 1), winograd_weight(w),
                           transforms=winograd_transforms(torch.float64))
    torch.testing.assert_close(got.permute(0, 3, 1, 2), F.conv2d(x, w, padding=1),
                               rtol=0, atol=1e-11)


def test_transforms_are_f43_and_its_kronecker_products() -> None:
    # 1-D: Aᵀ[(G g) ⊙ (Bᵀ d)] is the 4-output valid correlation of 6 samples with 3 taps; the
    # 2-D transforms are the Kronecker products of the 1-D ones.
    bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (winograd._BT, winograd._G,
                                                                 winograd._AT))
    d = torch.arange(6, dtype=torch.float64) ** 2
    taps = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    expected = torch.stack([(taps * d[i:i + 3]).sum() for i in range(4)])
    torch.testing.assert_close(at @ ((g @ taps) * (bt @ d)), expected)
    data_t, out_t = winograd_transforms(torch.float64)
    torch.testing.assert_close(data_t, torch.kron(bt, bt))
    torch.testing.assert_close(out_t, torch.kron(at, at))
    # The bias goes in through the one column of Aᵀ ⊗ Aᵀ that is all ones.
    torch.testing.assert_close(out_t[:, winograd._ALL_ONES_COLUMN], torch.ones(16, dtype=torch.float64))


def test_module_replaces_an_eligible_convolution_only() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1)
    fast = WinogradConv2d(conv)
    x = torch.randn(2, 4, 10, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x), rtol=0, atol=1e-4)
    assert fast(x).is_contiguous(memory_format=torch.channels_last)
    for other in (nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.Conv2d(4, 6, 3, padding=2, dilation=2),
                  nn.Conv2d(4, 6, 1), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                  nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")):
        assert not WinogradConv2d.eligible(other)
        with pytest.raises(ValueError, match="3x3, stride-1"):
            WinogradConv2d(other)


def test_bad_shapes_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"\(O, C, 3, 3\)"):
        winograd_weight(torch.zeros(2, 2, 5, 5))
    with pytest.raises(ValueError, match="36, 3, O"):
        winograd_conv3x3(torch.zeros(1, 4, 4, 3), torch.zeros(36, 5, 2))


def test_small_maps_run_the_direct_convolution() -> None:
    # Fewer output tiles than O / 32: streaming 36 transformed weights per channel pair costs
    # more than Winograd saves, so the module convolves directly; both paths give conv(x).
    conv = nn.Conv2d(4, 96, 3, padding=1)
    fast = WinogradConv2d(conv)
    small = torch.randn(1, 4, 4, 8).contiguous(memory_format=torch.channels_last)  # 2 tiles
    large = torch.randn(1, 4, 9, 8).contiguous(memory_format=torch.channels_last)  # 6 tiles
    assert fast.direct(small) and not fast.direct(large)
    assert not fast.direct(torch.cat([small, small]))  # tiles count over the batch
    with torch.no_grad():
        for x in (small, large):
            torch.testing.assert_close(fast(x), conv(x), rtol=0, atol=1e-4)
            assert fast(x).is_contiguous(memory_format=torch.channels_last)
