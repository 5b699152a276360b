"""Random walk: column-stochastic transition, sparse iteration equals the dense power, for
boundary (IRN) and feature (PSA / AffinityNet) affinities."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from wsss.ops.affinity import feature_pair_affinity, neighbour_pairs
from wsss.ops.random_walk import (
    affinity_pairs,
    chebyshev_degree,
    pair_transition_matrix,
    random_walk,
    random_walk_dense,
    random_walk_pairs,
    random_walk_pairs_dense,
    transition_matrix,
    transition_matrix_dense,
)


def _boundary(h: int, w: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    b = torch.rand(h, w, generator=gen, dtype=torch.float64) * 0.2
    b[:, w // 2] = 0.95
    return b


def test_transition_columns_sum_to_one() -> None:
    b = _boundary(9, 11)
    trans = transition_matrix(b, radius=5, beta=10.0).to_dense()
    torch.testing.assert_close(trans.sum(0), torch.ones(99, dtype=torch.float64))
    assert torch.all(trans >= 0)
    dense = transition_matrix_dense(b, radius=5, beta=10.0)
    torch.testing.assert_close(dense.sum(0), torch.ones(99, dtype=torch.float64))
    torch.testing.assert_close(trans, dense)


def test_affinity_is_symmetric_and_local() -> None:
    src, dst, aff = affinity_pairs(_boundary(6, 7), radius=3)
    assert len(set(zip(src.tolist(), dst.tolist()))) == src.numel()
    assert not (set(zip(src.tolist(), dst.tolist())) & set(zip(dst.tolist(), src.tolist())))
    assert torch.all((aff >= 0) & (aff <= 1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_walk_matches_dense_power(dtype: torch.dtype) -> None:
    b = _boundary(10, 11).to(dtype)
    cams = torch.rand(3, 10, 11, generator=torch.Generator().manual_seed(1), dtype=dtype)
    dense = random_walk_dense(cams, b, radius=5, beta=10.0, exp_times=8)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for truncation in (0.0, 1e-12):  # the plain 256 products; the Chebyshev expansion
        sparse = random_walk(cams, b, radius=5, beta=10.0, num_steps=256, tol=truncation)
        torch.testing.assert_close(sparse, dense, rtol=tol, atol=tol)


def test_chebyshev_degree_known_values() -> None:
    # x^t = 2^(1-t) Σ C(t, j) T_{t-2j}: for t = 2, x² = ½T_0 + ½T_2; dropping T_2 loses ½.
    assert chebyshev_degree(2, 0.4) == 2 and chebyshev_degree(2, 0.5) == 0
    # t = 3: x³ = ¾T_1 + ¼T_3.
    assert chebyshev_degree(3, 0.2) == 3 and chebyshev_degree(3, 0.25) == 1
    assert chebyshev_degree(0, 1e-9) == 0
    # k = t − 2j with j binomial (sd √t/2 = 8 for t = 256): k has sd 16, ~6 sd of tail ≈ 1e-9.
    assert 80 <= chebyshev_degree(256, 1e-9) <= 110
    # Long walks: ~6 sd = 6·√t, computed in log space (2^4095 overflows a float).
    assert 300 <= chebyshev_degree(4096, 1e-9) <= 450
    # A smaller tolerance never allows a smaller degree.
    degrees = [chebyshev_degree(64, 10.0 ** -e) for e in range(1, 15)]
    assert degrees == sorted(degrees)


def test_default_walk_error_within_its_stated_bound() -> None:
    # The default tol (1e-6 of each map's maximum) against the exact float64 power.
    b = _boundary(12, 13)
    cams = torch.rand(2, 12, 13, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64) * 5.0
    exact = random_walk_dense(cams, b, radius=5, beta=10.0, exp_times=8)
    walked = random_walk(cams, b, radius=5, beta=10.0, num_steps=256)
    error = (walked - exact).abs().amax(dim=(1, 2))
    assert torch.all(error <= 1e-6 * cams.abs().amax(dim=(1, 2)))
    assert torch.equal(walked.argmax(0), exact.argmax(0))


def test_constant_map_without_boundaries_stays_constant() -> None:
    cams = torch.full((1, 8, 8), 0.7, dtype=torch.float64)
    out = random_walk(cams, torch.zeros(8, 8, dtype=torch.float64), num_steps=16)
    torch.testing.assert_close(out, cams)
    assert random_walk(torch.zeros(0, 8, 8), torch.zeros(8, 8)).shape == (0, 8, 8)


@pytest.mark.slow
def test_500px_image_walk_stays_under_2gb() -> None:
    # A 500x500 image gives a 125x125 stride-4 map; the dense IRN walk needs > 3 GB here.
    code = (
        "import resource, torch\n"
        "from wsss.ops.random_walk import random_walk\n"
        "out = random_walk(torch.rand(3, 125, 125), torch.rand(125, 125) * 0.5, num_steps=256)\n"
        "assert torch.isfinite(out).all()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    peak_kb = int(result.stdout.strip().splitlines()[-1])
    assert peak_kb < 2 * 1024 * 1024


# Pair affinities (PSA / AffinityNet) --------------------------------------------------------------

def _feature_pairs(h: int, w: int, *, window: bool, dtype: torch.dtype = torch.float64
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    features = torch.rand(6, h, w, generator=gen, dtype=dtype)
    features[:, :, w // 2:] += 1.5  # two regions with low affinity between them
    src, dst = neighbour_pairs((h, w), 5, window=window)
    return src, dst, feature_pair_affinity(features, src, dst)


def test_pair_transition_two_nodes_known_answer() -> None:
    # A = [[1, a], [a, 1]] → T = A / (1 + a) (β = 1); one step from [1, 0] gives [1, a] / (1 + a).
    a = 0.25
    src, dst, aff = torch.tensor([0]), torch.tensor([1]), torch.tensor([a], dtype=torch.float64)
    trans = pair_transition_matrix(src, dst, aff, 2, beta=1.0).to_dense()
    torch.testing.assert_close(trans, torch.tensor([[1, a], [a, 1]], dtype=torch.float64) / (1 + a))
    cams = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    out = random_walk_pairs(cams, src, dst, aff, beta=1.0, num_steps=1)
    torch.testing.assert_close(out, torch.tensor([[[1.0, a]]], dtype=torch.float64) / (1 + a))
    # β sharpens: a^β with β = 2.
    out2 = random_walk_pairs(cams, src, dst, aff, beta=2.0, num_steps=1)
    torch.testing.assert_close(out2[0, 0, 1], torch.tensor(a * a / (1 + a * a),
                                                             dtype=torch.float64))


@pytest.mark.parametrize("window", [True, False])
def test_feature_transition_columns_sum_to_one_with_unit_diagonal(window: bool) -> None:
    h, w = 7, 12
    src, dst, aff = _feature_pairs(h, w, window=window)
    trans = pair_transition_matrix(src, dst, aff, h * w, beta=8.0).to_dense()
    torch.testing.assert_close(trans.sum(0), torch.ones(h * w, dtype=torch.float64))
    assert torch.all(trans >= 0)
    # Before normalisation A is symmetric with a unit diagonal: T · D = A.
    colsum = 1.0 / torch.diagonal(trans)  # A_jj = 1, so T_jj = 1 / D_j
    a_mat = trans * colsum[None, :]
    torch.testing.assert_close(a_mat, a_mat.t())
    torch.testing.assert_close(torch.diagonal(a_mat), torch.ones(h * w, dtype=torch.float64))


@pytest.mark.parametrize("window", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_feature_walk_matches_dense_power(window: bool, dtype: torch.dtype) -> None:
    h, w = 8, 13
    src, dst, aff = _feature_pairs(h, w, window=window, dtype=dtype)
    cams = torch.rand(3, h, w, generator=torch.Generator().manual_seed(4), dtype=dtype)
    dense = random_walk_pairs_dense(cams, src, dst, aff, beta=8.0, exp_times=6)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    sparse = random_walk_pairs(cams, src, dst, aff, beta=8.0, num_steps=64, tol=0.0)
    torch.testing.assert_close(sparse, dense, rtol=tol, atol=tol)
    assert sparse.min() >= 0 and sparse.max() <= 1 + tol  # convex combinations of the input
    # The default Chebyshev expansion: within 1e-6 of each map's maximum, float rounding on top.
    sparse = random_walk_pairs(cams, src, dst, aff, beta=8.0, num_steps=64)
    torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-6 + tol)


def test_irn_walk_is_the_pair_walk_on_boundary_affinities() -> None:
    b = _boundary(9, 10)
    cams = torch.rand(2, 9, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    src, dst, aff = affinity_pairs(b, radius=5)
    expected = random_walk_pairs(cams * (1 - b), src, dst, aff, beta=10.0, num_steps=32)
    assert torch.equal(random_walk(cams, b, radius=5, beta=10.0, num_steps=32), expected)


def test_constant_maps_stay_constant_on_feature_affinities() -> None:
    src, dst, aff = _feature_pairs(6, 11, window=True)
    cams = torch.full((2, 6, 11), 0.3, dtype=torch.float64)
    out = random_walk_pairs(cams, src, dst, aff, beta=8.0, num_steps=16)
    torch.testing.assert_close(out, cams)


def test_pair_walk_rejects_bad_pairs() -> None:
    cams = torch.rand(1, 3, 3)
    with pytest.raises(ValueError, match="pair indices"):
        random_walk_pairs(cams, torch.tensor([0]), torch.tensor([9]), torch.ones(1), beta=1.0,
                          num_steps=1)
    with pytest.raises(ValueError, match="one length"):
        random_walk_pairs(cams, torch.tensor([0, 1]), torch.tensor([2]), torch.ones(1), beta=1.0,
                          num_steps=1)


@pytest.mark.parametrize("tol", [1e-2, 1e-3, 1e-4])
def test_truncated_walk_error_within_its_bound_for_loose_tolerances(tol: float) -> None:
    # Loose tolerances make the truncation, not rounding, the error: the bound from the degrees
    # and the maps (`_error_gain`) must hold for peaked and for spread-out maps.
    gen = torch.Generator().manual_seed(7)
    for seed in range(3):
        b = _boundary(11, 12)
        b[seed + 2, :] = 0.9
        spread = torch.rand(2, 11, 12, generator=gen, dtype=torch.float64)
        peaked = torch.zeros(2, 11, 12, dtype=torch.float64)
        peaked[0, seed, seed + 1] = 1.0
        peaked[1, 10 - seed, 3] = 0.5
        for cams in (spread, peaked):
            exact = random_walk(cams, b, radius=5, beta=10.0, num_steps=128, tol=0.0)
            walked = random_walk(cams, b, radius=5, beta=10.0, num_steps=128, tol=tol)
            error = (walked - exact).abs().amax(dim=(1, 2))
            assert torch.all(error <= tol * cams.abs().amax(dim=(1, 2)))


def test_walk_follows_the_pair_content_not_the_tensor() -> None:
    # The CSR layout is cached per pair set; changing the pairs in place must not reuse it.
    src, dst, aff = _feature_pairs(6, 11, window=True)
    cams = torch.rand(2, 6, 11, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    first = random_walk_pairs(cams, src, dst, aff, beta=8.0, num_steps=16, tol=0.0)
    torch.testing.assert_close(first, random_walk_pairs_dense(cams, src, dst, aff, beta=8.0,
                                                              exp_times=4))
    src[:3], dst[:3] = dst[:3].clone(), torch.tensor([65, 64, 63])  # different, valid pairs
    second = random_walk_pairs(cams, src, dst, aff, beta=8.0, num_steps=16, tol=0.0)
    torch.testing.assert_close(second, random_walk_pairs_dense(cams, src, dst, aff, beta=8.0,
                                                               exp_times=4))
    assert not torch.allclose(first, second)
    # Equal pairs in new tensors give the same walk.
    again = random_walk_pairs(cams, src.clone(), dst.clone(), aff, beta=8.0, num_steps=16,
                              tol=0.0)
    assert torch.equal(again, second)


@pytest.mark.parametrize("tol", [0.0, 1e-6])
def test_pair_walk_is_differentiable_in_the_affinities(tol: float) -> None:
    src, dst, aff = _feature_pairs(6, 11, window=False)
    cams = torch.rand(2, 6, 11, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    src, dst, aff = src[::4], dst[::4], aff[::4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a: random_walk_pairs(cams, src, dst, a, beta=3.0, num_steps=8, tol=tol), (aff,))


def test_integer_power_by_squaring_matches_pow() -> None:
    from wsss.ops.random_walk import _power

    x = torch.rand(1000, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    for beta in (1, 2, 8, 10, 13.0):
        torch.testing.assert_close(_power(x, beta), x.pow(beta), rtol=1e-14, atol=0)
    assert torch.equal(_power(x, 2.5), x.pow(2.5))


def test_csr_layout_from_radix_sorts_equals_the_torch_sort(monkeypatch) -> None:
    # The CPU layout comes from numpy radix sorts of 16-bit keys; larger maps and GPUs sort
    # row·N + column with torch. Both give the same (row, column)-sorted CSR.
    from wsss.ops import random_walk as rw

    src, dst, _ = _feature_pairs(6, 11, window=True)
    radix = rw._PairPattern(src, dst, 66)
    monkeypatch.setattr(rw, "_RADIX_MAX_NODES", 0)
    sorted_ = rw._PairPattern(src, dst, 66)
    for name in ("order", "crow", "col"):
        assert torch.equal(getattr(radix, name), getattr(sorted_, name)), name
    rows = torch.repeat_interleave(torch.arange(66), radix.crow.diff().long())
    keys = rows * 66 + radix.col.long()
    assert torch.all(keys.diff() > 0)  # sorted by (row, column), no duplicate entry
