"""Sparse random walk on pixel-pair affinities, shared by IRN (arXiv:1904.05044) and PSA /
AffinityNet (arXiv:1803.10464).

Both official codes build a dense (N, N) affinity matrix A for the N = h·w cells of a strided
map — symmetric, unit diagonal, the given pair affinities off the diagonal — raise it to β,
normalise every column to sum to one (T = A^β D⁻¹ with D the column sums), square T a fixed
number of times (T^(2^exp_times), PSA's `logt`) and compute the row-vector product vec(M*) =
vec(M) · T (`jiwoon-ahn/irn: misc/indexing.py propagate_to_edge`,
`jiwoon-ahn/psa: infer_aff.py`). The dense matrices need N² floats (≈1 GB for a 500×500 image
at stride 4, several times that while squaring). Here T is kept sparse — each pixel has at most
2D + 1 neighbours (D directions of the radius-r half disc plus itself), stored as a CSR matrix,
and the walk never forms a power of it: O(N·D) memory.

The t-th power is evaluated as a truncated Chebyshev expansion, x^t = Σ_k c_k T_k(x) with
c_k = 2^(1−t)·C(t, (t−k)/2): over j = (t−k)/2 the coefficients are a binomial distribution
(standard deviation √t/2), so they concentrate on degrees k ≲ a few √t and degree m ≈ 6√t
already drops less than 1e-9 of the mass (t = 256: 90-96 sparse products instead of 256). This
is exact for any matrix whose spectrum lies in [−1, 1], which holds here: Tᵀ = D⁻¹A is similar
to the symmetric D^(−1/2) A D^(−1/2) and is row-stochastic. Dropping mass δ changes a walked map
by at most δ·‖D^(1/2) y‖₂ / √d_min (`_error_gain`); `chebyshev_degree` picks the smallest m
for a stated tolerance; `tol=0` runs the plain t products.

T's CSR layout depends only on the pairs, i.e. on the map size and radius, so it is built once
per size (`_PatternCache`) and each map only fills in the values, normalised in float64.

`random_walk_pairs` walks on any affinities given per pair (PSA: exp(−mean |f_i − f_j|) of
AffinityNet features); `random_walk` is IRN's special case with a_ij = 1 − max of the boundary
map along the path and the maps multiplied by (1 − B) first.
`transition_matrix_dense` / `random_walk_dense` / `random_walk_pairs_dense` are the dense
references.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from wsss.ops.affinity import search_directions
from wsss.ops.threads import single_cpu_thread

__all__ = [
    "affinity_pairs",
    "chebyshev_degree",
    "pair_transition_matrix",
    "random_walk",
    "random_walk_dense",
    "random_walk_pairs",
    "random_walk_pairs_dense",
    "transition_matrix",
    "transition_matrix_dense",
]


def _boundary_map(boundary: Tensor) -> Tensor:
    if boundary.ndim == 3 and boundary.shape[0] == 1:
        boundary = boundary[0]
    if boundary.ndim != 2:
        raise ValueError(f"boundary must be (h, w) or (1, h, w), got {tuple(boundary.shape)}")
    return boundary


def affinity_pairs(boundary: Tensor, radius: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    """Affinity of every pixel pair within `radius`: a_ij = 1 − max_{k ∈ path(i, j)} B_k.

    Each unordered pair appears once (half-disc directions); pairs leaving the map are absent,
    which is what IRN's padding with B = 1 and cropping amounts to.

    Args:
        boundary: (h, w) or (1, h, w) boundary probabilities in [0, 1].
        radius: neighbourhood radius r (IRN inference: 5).

    Returns:
        src int64 (P,), dst int64 (P,) flat pixel indices, affinity (P,) in [0, 1].
    """
    b = _boundary_map(boundary)
    h, w = b.shape
    index = torch.arange(h * w, device=b.device).view(h, w)
    srcs, dsts, values = [], [], []
    for (dy, dx), path in search_directions(radius):
        y1 = h - dy
        x0, x1 = max(0, -dx), w - max(0, dx)
        if y1 <= 0 or x1 <= x0:
            continue
        peak = None
        for py, px in path.tolist():
            part = b[py:py + y1, x0 + px:x1 + px]
            peak = part if peak is None else torch.maximum(peak, part)
        srcs.append(index[:y1, x0:x1].reshape(-1))
        dsts.append(index[dy:dy + y1, x0 + dx:x1 + dx].reshape(-1))
        values.append(1.0 - peak.reshape(-1))
    if not srcs:
        empty = torch.zeros(0, dtype=torch.int64, device=b.device)
        return empty, empty, b.new_zeros(0)
    return torch.cat(srcs), torch.cat(dsts), torch.cat(values)


def _pair_weights(src: Tensor, dst: Tensor, affinity: Tensor, n: int, beta: float
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(rows, cols, weights, degrees) of A^β for the symmetric A with unit diagonal and
    A[src, dst] = A[dst, src] = affinity; degrees (N,) are its column (= row) sums, all ≥ 1."""
    diag = torch.arange(n, device=affinity.device)
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    weights = torch.cat([affinity, affinity,
                         torch.ones(n, dtype=affinity.dtype, device=affinity.device)]).pow(beta)
    degrees = torch.zeros(n, dtype=affinity.dtype, device=affinity.device).index_add_(0, cols,
                                                                                      weights)
    return rows, cols, weights, degrees


def _pair_entries(src: Tensor, dst: Tensor, affinity: Tensor, n: int, beta: float
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of T = A^β D⁻¹ (`_pair_weights`); every column of T sums to one."""
    rows, cols, weights, degrees = _pair_weights(src, dst, affinity, n, beta)
    return rows, cols, weights / degrees[cols]


def _check_pairs(src: Tensor, dst: Tensor, affinity: Tensor, n: int) -> None:
    if not (src.ndim == dst.ndim == affinity.ndim == 1
            and src.shape == dst.shape == affinity.shape):
        raise ValueError(f"src, dst and affinity must be 1-D of one length, got "
                         f"{tuple(src.shape)}, {tuple(dst.shape)}, {tuple(affinity.shape)}")
    if src.numel() and (min(int(src.min()), int(dst.min())) < 0
                        or max(int(src.max()), int(dst.max())) >= n):
        raise ValueError(f"pair indices must lie in [0, {n})")


def _transition_entries(boundary: Tensor, radius: int, beta: float
                        ) -> tuple[Tensor, Tensor, Tensor, int]:
    """(rows, cols, values, N) of T = A^β D⁻¹: symmetric A with unit diagonal, columns sum to 1."""
    b = _boundary_map(boundary)
    n = b.numel()
    src, dst, aff = affinity_pairs(b, radius)
    return (*_pair_entries(src, dst, aff, n, beta), n)


def pair_transition_matrix(src: Tensor, dst: Tensor, affinity: Tensor, num_nodes: int, *,
                           beta: float) -> Tensor:
    """Sparse transition T = A^β D⁻¹ from pair affinities (PSA `infer_aff.py`, IRN
    `to_transition_matrix`, before the squaring).

    A is symmetric (each pair sets A[i, j] and A[j, i]) with a unit diagonal, so every column has
    a positive sum; listing a pair twice (in either order) adds its weight twice.

    Args:
        src: int64 (P,) flat node indices in [0, num_nodes).
        dst: int64 (P,) flat node indices, the other end of each pair.
        affinity: (P,) non-negative pair affinities (PSA: exp(−mean_c |f_c(i) − f_c(j)|)).
        num_nodes: N, the number of nodes (h·w of the map).
        beta: affinity exponent β (PSA: 8, IRN: 10).

    Returns:
        sparse COO (N, N), coalesced, dtype of `affinity`; every column sums to one.
    """
    _check_pairs(src, dst, affinity, num_nodes)
    rows, cols, values = _pair_entries(src, dst, affinity, num_nodes, beta)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (num_nodes, num_nodes),
                                   check_invariants=False).coalesce()


def transition_matrix(boundary: Tensor, *, radius: int = 5, beta: float = 10.0) -> Tensor:
    """Sparse transition T = A^β D⁻¹ (IRN `to_transition_matrix` before the squaring).

    A is symmetric with a unit diagonal, so every column has a positive sum.

    Args:
        boundary: (h, w) or (1, h, w) boundary probabilities in [0, 1].
        radius: neighbourhood radius.
        beta: affinity exponent β (IRN: 10).

    Returns:
        sparse COO (N, N), N = h·w, coalesced; every column sums to one.
    """
    rows, cols, values, n = _transition_entries(boundary, radius, beta)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n),
                                   check_invariants=False).coalesce()


def random_walk(
    cams: Tensor,
    boundary: Tensor,
    *,
    radius: int = 5,
    beta: float = 10.0,
    num_steps: int = 256,
    tol: float = 1e-6,
) -> Tensor:
    """Propagate maps inside boundaries: vec(M*) = vec(M ⊙ (1 − B)) · T^t with sparse T.

    Memory is O(N · D) (D = directions of the radius), never O(N²): a 500×500 image (125×125 at
    stride 4, radius 5) needs about 1.1 M non-zeros.

    Args:
        cams: (K, h, w) non-negative maps (IRN: stride-4 CAMs, AMN raises them to 1.3 first).
        boundary: (h, w) or (1, h, w) boundary probabilities in [0, 1], same size.
        radius: neighbourhood radius (IRN inference: 5).
        beta: affinity exponent β (IRN: 10).
        num_steps: t, the number of transitions (IRN: 2 ** exp_times = 2 ** 8 = 256).
        tol: bound on the truncation error relative to each map's maximum (`random_walk_pairs`).

    Returns:
        (K, h, w) walked maps, dtype and device of `cams`.
    """
    b = _boundary_map(boundary).to(cams.dtype)
    if cams.ndim != 3 or tuple(cams.shape[-2:]) != tuple(b.shape):
        raise ValueError(f"cams {tuple(cams.shape)} must be (K, h, w) with (h, w) = "
                         f"{tuple(b.shape)}")
    with single_cpu_thread(b.device.type == "cpu"):  # ~100 small slicing ops
        src, dst, aff = affinity_pairs(b, radius)
        return random_walk_pairs(cams * (1.0 - b), src, dst, aff, beta=beta,
                                 num_steps=num_steps, tol=tol)


def random_walk_pairs(
    cams: Tensor,
    src: Tensor,
    dst: Tensor,
    affinity: Tensor,
    *,
    beta: float,
    num_steps: int,
    tol: float = 1e-6,
) -> Tensor:
    """Walk maps on pair affinities: vec(M*) = vec(M) · T^t with sparse T = A^β D⁻¹.

    A is symmetric with a unit diagonal (`pair_transition_matrix`); T's columns sum to one and
    the maps are row vectors, so every walked value is a convex combination of input values
    (maps in [0, 1] stay in [0, 1], up to `tol`). Memory is O(N + P), never O(N²).

    Args:
        cams: (K, h, w) non-negative maps (PSA: the 8×8-pooled [background; CAMs] stack).
        src: int64 (P,) flat indices into the h·w cells (row-major).
        dst: int64 (P,) flat indices of the other end of each pair.
        affinity: (P,) non-negative pair affinities, same device as `cams`.
        beta: affinity exponent β (PSA: 8).
        num_steps: t, the number of transitions (PSA: 2 ** logt = 256; SEAM/ICAM 64).
        tol: bound on |walked − exact| / max|map| from truncating the Chebyshev expansion of
            T^t (float rounding comes on top); 0 applies T exactly `num_steps` times.

    Returns:
        (K, h, w) walked maps, dtype and device of `cams`.
    """
    if cams.ndim != 3:
        raise ValueError(f"cams must be (K, h, w), got {tuple(cams.shape)}")
    k, h, w = cams.shape
    n = h * w
    _check_pairs(src, dst, affinity, n)
    if k == 0:
        return cams.clone()
    # Building T and each step are small ops; on the CPU, intra-op threads cost more in
    # synchronisation than they save (the build 1.2× slower on 2 threads when idle, the products
    # up to 40× on a loaded 2-core machine), so use one.
    with single_cpu_thread(cams.device.type == "cpu"):
        step, degrees = _walk_matrix(src, dst, affinity.to(cams.dtype), n, beta)
        y = cams.reshape(k, n).t()
        degree = num_steps
        if tol > 0 and num_steps > 1:
            degree = chebyshev_degree(num_steps, tol / _error_gain(y, degrees))
        if y.device.type == "cpu" and k % 4:
            # The CPU sparse × dense kernel is ~1.7× faster per product for a multiple of 4
            # columns (measured: 3 columns 0.27 ms, 4 columns 0.15 ms at 47×63); zero maps
            # stay 0.
            y = torch.cat([y, y.new_zeros(n, 4 - k % 4)], dim=1)
        y = y.contiguous()
        if degree >= num_steps:
            for _ in range(num_steps):
                # y ← y · T for row vectors y (K, N), i.e. Yᵀ ← Tᵀ · Yᵀ with Tᵀ in CSR.
                y = torch.sparse.mm(step, y)
        else:
            y = _chebyshev_power(step, y, num_steps, degree)
    return y[:, :k].t().reshape(k, h, w)


def chebyshev_degree(power: int, tol: float) -> int:
    """Smallest degree m whose truncated Chebyshev expansion of x^power drops ≤ `tol` of the
    coefficient mass, i.e. sup over [−1, 1] of |x^power − p_m(x)| ≤ tol.

    x^t = 2^(1−t) Σ_{j < t/2} C(t, j) T_{t−2j}(x) (+ 2^(−t) C(t, t/2) for even t); the dropped
    terms are the highest degrees, and |T_k| ≤ 1 on [−1, 1]. Returns `power` when no term can go.
    """
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    dropped = 0.0
    for j in range(power // 2 + 1):  # degrees power, power − 2, … (largest first)
        k = power - 2 * j
        mass = _chebyshev_coefficient(power, k)
        if dropped + mass > tol:
            return k
        dropped += mass
    return 0


def _chebyshev_coefficient(power: int, k: int) -> float:
    """c_k of x^power = Σ_k c_k T_k(x): 2^(1−t) C(t, (t−k)/2), halved for k = 0; 0 if t − k odd."""
    if k > power or (power - k) % 2:
        return 0.0
    j = (power - k) // 2  # in log space: C(t, j) / 2^(t−1) overflows a float for large t
    log_value = (math.lgamma(power + 1) - math.lgamma(j + 1) - math.lgamma(power - j + 1)
                 - (power - 1) * math.log(2.0))
    return math.exp(log_value) / (2.0 if k == 0 else 1.0)


def _chebyshev_power(step: Tensor, y: Tensor, power: int, degree: int) -> Tensor:
    """p_m(M)·y ≈ M^power·y by the three-term recurrence T_{k+1} = 2M·T_k − T_{k−1}
    (`degree` ≥ 1 sparse products; M (N, N) sparse, y (N, K)). Without autograd the recurrence
    runs in place on two buffers (5 % faster per product on the CPU than a new output)."""
    in_place = not (torch.is_grad_enabled() and (y.requires_grad or step.requires_grad))
    previous, current = (y.clone() if in_place else y), torch.sparse.mm(step, y)
    out = _chebyshev_coefficient(power, 0) * previous + _chebyshev_coefficient(power, 1) * current
    for k in range(2, degree + 1):
        if in_place:  # previous ← 2M·current − previous = T_k, then swap the names
            previous, current = current, previous.addmm_(step, current, beta=-1.0, alpha=2.0)
        else:
            previous, current = current, torch.sparse.addmm(previous, step, current,
                                                            beta=-1.0, alpha=2.0)
        coefficient = _chebyshev_coefficient(power, k)
        if coefficient:
            out.add_(current, alpha=coefficient)
    return out


def _walk_matrix(src: Tensor, dst: Tensor, affinity: Tensor, n: int, beta: float
                 ) -> tuple[Tensor, Tensor]:
    """(M, degrees): M = Tᵀ = D⁻¹A^β as a CSR (N, N) tensor and the degrees d (N,) of A^β, the
    symmetric matrix with unit diagonal and A[src, dst] = A[dst, src] = affinity (all d ≥ 1).

    Row i of M holds w/d_i for every pair with an end at i and 1/d_i on the diagonal. Where
    those entries go (`_PairPattern`) depends only on the pairs, which are the same for every
    map of one size; it is cached, so per map only the values are computed (one gather).
    Differentiable in `affinity`.
    """
    pattern = _PATTERNS.lookup(src, dst, n)
    # Rows normalised in float64: a row sum off one by ε scales the walked maps by about
    # 1 + t·ε (t = 256), and float32 sums made the walk 4× less accurate.
    weights = _power(affinity, beta).to(torch.float64)
    degrees = (torch.ones(n, dtype=weights.dtype, device=weights.device)
               .index_add(0, src, weights).index_add(0, dst, weights))
    inverse = 1.0 / degrees
    entries = torch.cat([weights * inverse.index_select(0, src),
                         weights * inverse.index_select(0, dst), inverse]).to(affinity.dtype)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(pattern.crow, pattern.col,
                                         entries.index_select(0, pattern.order), (n, n),
                                         check_invariants=False)
    return matrix, degrees


def _power(x: Tensor, beta: float) -> Tensor:
    """x^β, for an integer β in [1, 64] by repeated squaring (on the CPU ~8× faster than
    `pow`, which calls the scalar power function per element)."""
    if not (float(beta).is_integer() and 1 <= beta <= 64):
        return x.pow(beta)
    exponent, base, result = int(beta), x, None
    while exponent:
        if exponent & 1:
            result = base if result is None else result * base
        exponent >>= 1
        if exponent:
            base = base * base
    return result


_RADIX_MAX_NODES = 2 ** 16  # node indices that fit 16-bit sort keys


class _PairPattern:
    """CSR layout of M for pairs (src, dst) on N nodes: the entries [pairs at src; pairs at dst;
    diagonal] (2P + N) sorted by (row, column), i.e. by the end they sit at, then the other.

    `order` (2P + N,) int64 lists the entries in that order; `crow` (N + 1,) and `col` (2P + N,)
    are the CSR indices, int32 where they fit (a third less memory traffic per product than
    int64). Sorted columns are what autograd through the sparse product expects.
    """

    def __init__(self, src: Tensor, dst: Tensor, n: int) -> None:
        nodes = torch.arange(n, device=src.device)
        rows = torch.cat([src, dst, nodes])
        cols = torch.cat([dst, src, nodes])
        if rows.device.type == "cpu" and n <= _RADIX_MAX_NODES:
            # Two stable argsorts of 16-bit keys (column, then row) are two numpy radix sorts
            # (every VOC and COCO map at stride 4 fits): ~3 ms at 47×63 with PSA's radius 5,
            # a sort of row·N + column in torch ~2-3× that.
            keys = np.stack([rows.numpy(), cols.numpy()]).astype(np.uint16)
            order = np.argsort(keys[1], kind="stable")
            order = order[np.argsort(keys[0][order], kind="stable")]
            order = torch.from_numpy(order)
        else:
            order = torch.sort(rows * n + cols).indices
        index_dtype = torch.int32 if rows.numel() < 2 ** 31 else torch.int64
        crow = torch.zeros(n + 1, dtype=torch.int64, device=src.device)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
        self.order = order
        self.crow = crow.to(index_dtype)
        self.col = cols.index_select(0, order).to(index_dtype)


class _PatternCache:
    """The `_PairPattern`s of the last few pair sets, found by content: a dataset walks many
    maps of a handful of sizes, and grouping the entries costs more than the values."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: list[tuple[Tensor, Tensor, int, _PairPattern]] = []

    def lookup(self, src: Tensor, dst: Tensor, n: int) -> _PairPattern:
        for i, (s, d, m, pattern) in enumerate(self._entries):
            if (m == n and s.device == src.device and s.shape == src.shape
                    and torch.equal(s, src) and torch.equal(d, dst)):
                self._entries.insert(0, self._entries.pop(i))
                return pattern
        pattern = _PairPattern(src, dst, n)
        # Copies: a caller may change its index tensors in place after the call.
        self._entries.insert(0, (src.clone(), dst.clone(), n, pattern))
        del self._entries[self.size:]
        return pattern


_PATTERNS = _PatternCache()


def _error_gain(y: Tensor, degrees: Tensor) -> float:
    """g with ‖p(M)y − Mᵗy‖∞ ≤ δ·g·max|y| per column of y (N, K), for a polynomial p with
    sup_[−1,1] |p(x) − xᵗ| ≤ δ and M = D⁻¹A (degrees d (N,), all ≥ 1).

    M = D^(−1/2) S D^(1/2) with S = D^(−1/2) A D^(−1/2) symmetric and its spectrum in [−1, 1], so
    ‖p(S) − Sᵗ‖₂ ≤ δ and |e_i| ≤ d_i^(−1/2)·δ·‖D^(1/2) y‖₂: g = max over columns of
    ‖D^(1/2) y‖₂ / (√d_min · max|y|) ≤ √(N·d_max/d_min). Zero columns have no error.
    """
    y, degrees = y.detach(), degrees.detach()
    peak = y.abs().amax(0)
    if not bool((peak > 0).any()):
        return 1.0
    norms = (y * degrees.to(y).sqrt()[:, None]).norm(dim=0)
    gain = norms[peak > 0] / peak[peak > 0]
    return max(1.0, float(gain.max()) / math.sqrt(float(degrees.min())))


def transition_matrix_dense(boundary: Tensor, *, radius: int = 5, beta: float = 10.0,
                            exp_times: int = 0) -> Tensor:
    """Dense reference: T = A^β D⁻¹, then squared `exp_times` times (IRN). O(N²) memory."""
    rows, cols, values, n = _transition_entries(boundary, radius, beta)
    trans = torch.zeros((n, n), dtype=values.dtype, device=values.device)
    trans[rows, cols] = values
    for _ in range(exp_times):
        trans = trans @ trans
    return trans


def random_walk_dense(cams: Tensor, boundary: Tensor, *, radius: int = 5, beta: float = 10.0,
                      exp_times: int = 8) -> Tensor:
    """Dense reference of `random_walk` with t = 2 ** exp_times (IRN `propagate_to_edge`)."""
    b = _boundary_map(boundary).to(cams.dtype)
    k, h, w = cams.shape
    trans = transition_matrix_dense(b, radius=radius, beta=beta, exp_times=exp_times)
    return ((cams * (1.0 - b)).reshape(k, h * w) @ trans).reshape(k, h, w)


def random_walk_pairs_dense(cams: Tensor, src: Tensor, dst: Tensor, affinity: Tensor, *,
                            beta: float, exp_times: int) -> Tensor:
    """Dense reference of `random_walk_pairs` with t = 2 ** exp_times (PSA `infer_aff.py`:
    dense A^β, column-normalised, squared `logt` times, applied as cam_vec @ T). O(N²) memory."""
    k, h, w = cams.shape
    n = h * w
    rows, cols, values = _pair_entries(src, dst, affinity.to(cams.dtype), n, beta)
    trans = torch.zeros((n, n), dtype=cams.dtype, device=cams.device)
    trans.index_put_((rows, cols), values, accumulate=True)
    for _ in range(exp_times):
        trans = trans @ trans
    return (cams.reshape(k, n) @ trans).reshape(k, h, w)
