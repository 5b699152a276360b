"""Random walks: IRN (boundary affinities) and PSA/AffinityNet (feature affinities), sparse
`wsss.ops.random_walk` against the official dense formulation.

IRN reference, as in `jiwoon-ahn/irn: misc/indexing.py propagate_to_edge`: the boundary map is
padded with 1 (left/right/bottom by the radius), each half-disc direction's affinity is one
minus the max boundary along its path, the pairs (plus their transposes and the unit diagonal)
go into a dense (N, N) matrix which is cropped back to the image, raised to β, normalised per
column and squared `exp_times` times; the maps are multiplied by (1 − B) and by T^(2^t).
PSA reference, as in `jiwoon-ahn/psa: infer_aff.py`: the dense (N, N) affinity from pair
affinities, ^β, column-normalised, squared `logt` times, maps (K, N) @ T.

wsss keeps T sparse and applies T^t as a truncated Chebyshev expansion (92-94 sparse products for
t = 256, truncation error <= 1e-6 of each map's maximum; `wsss.ops.random_walk`).

The dense reference is O(N²) memory and O(N³ · t) time, so by default it runs at half the VOC
stride-4 size (47x63); `--full` also runs it at 94x125 (minutes, about 2.5 GB). The sparse walk
is always also measured at the VOC size, where the targets (>= 100x, <= 0.5 GB) apply. Usage:

    python benchmarks/bench_random_walk.py [--repeats 3] [--full]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, agreement, compare, format_table, header, measure  # noqa: E402

from wsss.ops import random_walk as rw  # noqa: E402

# Measured with the official code on this machine kind (issue 11): 94x125, 8 squarings.
OFFICIAL_IRN_VOC_S = 193.0


def _half_disc_paths(radius: int) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """IRN `PathIndex.get_all_dir_paths`: the directions of the half disc of `radius` and, for
    each, the grid points of its bounding box within distance 1 of the segment."""
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius)
             if x * x + y * y < radius * radius]
    out = []
    for dy, dx in dirs:
        length_sq = dy * dy + dx * dx
        coords = [(y, x)
                  for y in range(min(0, dy), max(0, dy) + 1)
                  for x in range(min(0, dx), max(0, dx) + 1)
                  if (dy * x - dx * y) ** 2 / length_sq < 1]
        out.append(((dy, dx), coords))
    return out


def _dense_transition(aff: torch.Tensor, beta: float, exp_times: int) -> torch.Tensor:
    """IRN `to_transition_matrix` / PSA's inline block: A^β, columns to one, then squared."""
    scaled = aff.pow(beta)
    trans = scaled / scaled.sum(0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    return trans


def irn_walk_reference(cams: torch.Tensor, boundary: torch.Tensor, *, radius: int = 5,
                       beta: float = 10.0, exp_times: int = 8) -> torch.Tensor:
    """(K, h, w), (h, w) → (K, h, w): IRN `propagate_to_edge` with the dense matrices."""
    k, h, w = cams.shape
    ph, pw = h + radius, w + 2 * radius
    padded = F.pad(boundary[None, None], (radius, radius, 0, radius), value=1.0)[0, 0]
    full = torch.arange(ph * pw).view(ph, pw)
    r0 = radius - 1  # IRN's radius_floor: pairs start at column r0 and never leave the padding
    ch, cw = ph - r0, pw - 2 * r0
    src = full[:ch, r0:r0 + cw].reshape(-1)
    rows, cols, vals = [src], [src], [torch.ones(src.numel())]
    for (dy, dx), coords in _half_disc_paths(radius):
        peak = torch.stack([padded[y:y + ch, r0 + x:r0 + x + cw] for y, x in coords]).amax(0)
        dst = full[dy:dy + ch, r0 + dx:r0 + dx + cw].reshape(-1)
        a = 1.0 - peak.reshape(-1)
        rows += [src, dst]
        cols += [dst, src]
        vals += [a, a]
    n_pad = ph * pw
    dense = torch.zeros(n_pad, n_pad)
    dense.index_put_((torch.cat(rows), torch.cat(cols)), torch.cat(vals), accumulate=True)
    # The identity is added once per source pixel above; padding pixels that are no source
    # get theirs here, as IRN's identity covers all padded vertices.
    dense.view(-1)[:: n_pad + 1].clamp_(min=1.0)
    dense = dense.view(ph, pw, ph, pw)[:-radius, radius:-radius, :-radius, radius:-radius]
    dense = dense.reshape(h * w, h * w)
    trans = _dense_transition(dense, beta, exp_times)
    return ((cams * (1 - boundary)).reshape(k, h * w) @ trans).reshape(k, h, w)


def psa_walk_reference(cams: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                       affinity: torch.Tensor, *, beta: float = 8.0,
                       logt: int = 8) -> torch.Tensor:
    """(K, h, w) → (K, h, w): PSA `infer_aff.py` with a dense (N, N) affinity."""
    k, h, w = cams.shape
    n = h * w
    dense = torch.eye(n)
    dense[src, dst] = affinity
    dense[dst, src] = affinity
    trans = _dense_transition(dense, beta, logt)
    return (cams.reshape(k, n) @ trans).reshape(k, h, w)


def _irn_inputs(h: int, w: int, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(k, h, w, generator=g)
    # A boundary map with a few strong edges on weak noise, like a trained edge branch.
    boundary = 0.1 * torch.rand(h, w, generator=g)
    boundary[h // 3, :] = 0.9
    boundary[:, w // 2] = 0.8
    return cams, boundary


def _psa_inputs(h: int, w: int, k: int = 3, seed: int = 0):
    from wsss.ops.affinity import neighbour_pairs

    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(k, h, w, generator=g)
    src, dst = neighbour_pairs((h, w), 5, window=True)  # PSA `get_indices_of_pairs`
    affinity = torch.rand(src.numel(), generator=g) ** 0.2
    return cams, src, dst, affinity


def run(repeats: int = 3, full: bool = False) -> list[Row]:
    rows = []
    torch.manual_seed(0)
    sizes = [(47, 63)] + ([(94, 125)] if full else [])
    with torch.inference_mode():
        for h, w in sizes:
            cams, boundary = _irn_inputs(h, w)
            ours, ref, ratio = compare(
                lambda: rw.random_walk(cams, boundary, radius=5, beta=10.0, num_steps=256),
                lambda: irn_walk_reference(cams, boundary), repeats=repeats,
                ref_repeats=1 if h > 50 else repeats)
            agree = agreement(ours.result, ref.result, class_dim=0)
            assert agree["argmax_equal"] and agree["max_abs_diff"] < 1e-3, agree
            rows.append(Row(f"IRN walk {h}x{w}, t=256", ours.seconds, ref.seconds, ">= 100x",
                            ratio >= 100, ours.peak_mb, ref.peak_mb,
                            f"max|Δ| {agree['max_abs_diff']:.1e}, argmax same",
                            ratio_value=ratio))
        # VOC size: our walk alone; the official code took 193 s and 2.4 GB on this machine kind.
        cams, boundary = _irn_inputs(94, 125)
        ours = measure(lambda: rw.random_walk(cams, boundary, radius=5, beta=10.0,
                                              num_steps=256), repeats=repeats)
        est = OFFICIAL_IRN_VOC_S / ours.seconds
        rows.append(Row("IRN walk 94x125 (VOC), t=256", ours.seconds, None, "<= 512 MB",
                        (ours.peak_mb or 0) <= 512, ours.peak_mb, None, "",
                        f"{est:.0f}x vs official 193 s (issue 11)"))

        # PSA / AffinityNet: stride 8 of a VOC image (47x63), radius 5, β 8, t = 2^8.
        cams, src, dst, affinity = _psa_inputs(47, 63)
        ours, ref, ratio = compare(
            lambda: rw.random_walk_pairs(cams, src, dst, affinity, beta=8.0, num_steps=256),
            lambda: psa_walk_reference(cams, src, dst, affinity), repeats=repeats)
        agree = agreement(ours.result, ref.result, class_dim=0)
        assert agree["argmax_equal"] and agree["max_abs_diff"] < 1e-3, agree
        rows.append(Row("PSA walk 47x63 (VOC), t=256", ours.seconds, ref.seconds, ">= 100x",
                        ratio >= 100, ours.peak_mb, ref.peak_mb,
                        f"max|Δ| {agree['max_abs_diff']:.1e}, argmax same", ratio_value=ratio,
                        note="CSR layout cached: every map of a size after the first"))
        # The first map of a size: the pairs' CSR layout is built, not found in the cache.
        # Cycling through more pair orders than the cache holds makes every call a miss.
        orders = [torch.randperm(src.numel(), generator=torch.Generator().manual_seed(i))
                  for i in range(2 * rw._PATTERNS.size)]
        variants = iter([(src[o], dst[o], affinity[o]) for o in orders] * (repeats + 2))
        cold = measure(lambda: rw.random_walk_pairs(cams, *next(variants), beta=8.0,
                                                    num_steps=256), repeats=repeats)
        cold_ratio = ref.seconds / cold.seconds
        rows.append(Row("PSA walk 47x63, first map of a size", cold.seconds, ref.seconds,
                        ">= 100x", cold_ratio >= 100, cold.peak_mb, ref.peak_mb,
                        "same walk, pairs in a new order", ratio_value=cold_ratio,
                        note="CSR layout built in the call"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true",
                        help="also run the dense IRN reference at 94x125 (minutes, ~2.5 GB)")
    args = parser.parse_args()
    print(header("random walks"))
    print(format_table(run(args.repeats, args.full)))


if __name__ == "__main__":
    main()
