"""Random walk: column-stochastic transition, sparse iteration equals the dense power."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from wsss.ops.random_walk import (
    affinity_pairs,
    random_walk,
    random_walk_dense,
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
    sparse = random_walk(cams, b, radius=5, beta=10.0, num_steps=256)
    dense = random_walk_dense(cams, b, radius=5, beta=10.0, exp_times=8)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(sparse, dense, rtol=tol, atol=tol)


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
