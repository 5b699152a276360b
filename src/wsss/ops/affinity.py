"""Inter-pixel relations for IRN (arXiv:1904.05044): path indices, affinities, affinity labels.

Re-implements the indexing of `jiwoon-ahn/irn: misc/indexing.py` (`PathIndex`,
`edge_to_affinity`, `PathIndex.to_displacement`) and `voc12/dataloader.py`
(`GetAffinityLabelFromIndices`). A *direction* d = (dy, dx) joins a source pixel i to the
destination i + d; the directions cover a half disc of the given radius, so every unordered
pair within the radius appears once. Per-direction outputs are ordered by path length (as IRN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.labels import BACKGROUND, IGNORE_INDEX

__all__ = [
    "PathIndex",
    "affinity_from_boundary",
    "affinity_labels",
    "affinity_seed_labels",
    "background_stack",
    "downsample_labels",
    "feature_affinity",
    "feature_pair_affinity",
    "neighbour_pairs",
    "pooled_affinity_labels",
    "pair_displacement",
    "search_directions",
]


def search_directions(radius: int) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Directions of a half disc and the lattice path of each, grouped by path length.

    Directions are (0, x) for x = 1..r-1, then (y, x) for y = 1..r-1, x = -r+1..r-1 with
    x² + y² < r². The path of d holds the points of the bounding box of (0, 0)–d whose squared
    distance to the line through them is < 1 (both ends included), farthest first.

    Args:
        radius: r ≥ 2 (IRN: 10 for training, 5 for the random walk; r = 5 gives 34 directions).

    Returns:
        list of (direction (dy, dx), path int64 (L, 2) of (y, x) offsets, path[0] == direction),
        sorted by L (stable, so directions of equal length keep the order above).
    """
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius)
             if x * x + y * y < radius * radius]
    out = []
    for dy, dx in dirs:
        length_sq = dy * dy + dx * dx
        points = [(y, x)
                  for y in range(min(0, dy), max(0, dy) + 1)
                  for x in range(min(0, dx), max(0, dx) + 1)
                  if (dy * x - dx * y) ** 2 / length_sq < 1]
        points.sort(key=lambda p: -abs(p[0]) - abs(p[1]))
        out.append(((dy, dx), np.asarray(points, dtype=np.int64)))
    out.sort(key=lambda item: len(item[1]))
    return out


@dataclass(frozen=True)
class PathIndex:
    """Flat pixel indices of every (source, direction) pair of an (h, w) map.

    Sources are the top-left-anchored window rows [0, h − f), columns [f, w − f) with
    f = ceil(r) − 1, so that every destination source + d lies inside the map.

    Attributes:
        radius: r.
        size: (h, w) of the map.
        directions: int64 (D, 2) of (dy, dx), in path-length order.
        src_indices: int64 (S,) flat indices of the sources.
        dst_indices: int64 (D, S) flat indices of the destinations.
        path_indices: per path length L, int64 (D_L, L, S): flat indices of the path points
            (the D_L concatenated over L give the D directions in order).
    """

    radius: int
    size: tuple[int, int]
    directions: Tensor
    src_indices: Tensor
    dst_indices: Tensor
    path_indices: tuple[Tensor, ...]

    @classmethod
    def build(cls, radius: int, size: tuple[int, int]) -> PathIndex:
        """Indices for a map of `size` = (h, w); h > f and w > 2f are required."""
        h, w = int(size[0]), int(size[1])
        floor = int(math.ceil(radius) - 1)
        ch, cw = h - floor, w - 2 * floor
        if ch < 1 or cw < 1:
            raise ValueError(f"map {h}x{w} too small for radius {radius} (needs h > {floor}, "
                             f"w > {2 * floor})")
        full = np.arange(h * w, dtype=np.int64).reshape(h, w)

        def window(dy: int, dx: int) -> np.ndarray:
            return full[dy:dy + ch, floor + dx:floor + dx + cw].reshape(-1)

        groups: dict[int, list[np.ndarray]] = {}
        directions = []
        for direction, path in search_directions(radius):
            directions.append(direction)
            groups.setdefault(len(path), []).append(np.stack([window(y, x) for y, x in path]))
        path_indices = tuple(torch.from_numpy(np.stack(groups[k])) for k in sorted(groups))
        dst = torch.cat([p[:, 0] for p in path_indices], dim=0)
        return cls(radius=radius, size=(h, w),
                   directions=torch.tensor(directions, dtype=torch.int64),
                   src_indices=torch.from_numpy(window(0, 0).copy()), dst_indices=dst,
                   path_indices=path_indices)

    @property
    def num_directions(self) -> int:
        return int(self.directions.shape[0])


def affinity_from_boundary(boundary: Tensor, index: PathIndex) -> Tensor:
    """IRN affinity a_ij = 1 − max_{k ∈ path(i, j)} B_k.

    Args:
        boundary: (B, 1, h, w) boundary probabilities in [0, 1] (sigmoid of the edge logits).
        index: `PathIndex` for (h, w).

    Returns:
        (B, D, S) affinities in [0, 1], directions in `index` order.
    """
    if tuple(boundary.shape[-2:]) != index.size:
        raise ValueError(f"boundary is {tuple(boundary.shape[-2:])}, index is for {index.size}")
    flat = boundary.reshape(boundary.shape[0], -1)
    out = []
    for paths in index.path_indices:
        ind = paths.to(flat.device)
        values = flat[:, ind.reshape(-1)].view(flat.shape[0], *ind.shape)  # (B, D_L, L, S)
        out.append(1.0 - values.amax(dim=2))
    return torch.cat(out, dim=1)


def pair_displacement(displacement: Tensor, index: PathIndex) -> Tensor:
    """Displacement differences D(src) − D(dst) for every pair (IRN `to_displacement`).

    Args:
        displacement: (B, 2, h, w) predicted displacement field.

    Returns:
        (B, 2, D, S).
    """
    flat = displacement.reshape(*displacement.shape[:2], -1)
    src = flat[..., index.src_indices.to(flat.device)]  # (B, 2, S)
    dst = flat[..., index.dst_indices.to(flat.device)]  # (B, 2, D, S)
    return src.unsqueeze(2) - dst


def affinity_labels(seeds: Tensor, index: PathIndex) -> tuple[Tensor, Tensor, Tensor]:
    """Pair labels from a seed map (IRN `GetAffinityLabelFromIndices`).

    A pair is valid when neither end is 255 (IRN: both labels < 21, i.e. not ignore).

    Args:
        seeds: (h, w) or (B, h, w) integer labels, 0 = background, 255 = unsure.
        index: `PathIndex` for (h, w).

    Returns:
        (bg_pos, fg_pos, neg), float32 (D, S) or (B, D, S): same label and background; same
        foreground label; different labels.
    """
    batched = seeds.ndim == 3
    flat = seeds.reshape(seeds.shape[0] if batched else 1, -1).long()
    src = flat[:, index.src_indices.to(flat.device)].unsqueeze(1)  # (B, 1, S)
    dst = flat[:, index.dst_indices.to(flat.device)]  # (B, D, S)
    valid = (src != IGNORE_INDEX) & (dst != IGNORE_INDEX)
    equal = src == dst
    bg_pos = (equal & valid & (src == BACKGROUND)).float()
    fg_pos = (equal & valid & (src != BACKGROUND)).float()
    neg = (~equal & valid).float()
    if not batched:
        return bg_pos[0], fg_pos[0], neg[0]
    return bg_pos, fg_pos, neg


def _pil_nearest_index(big: int, small: int) -> list[int]:
    """Source index of each of `small` outputs in Pillow's NEAREST resize from `big` samples.

    Pillow (`libImaging/Geometry.c`, `ImagingScaleAffine`) starts at 0.5·big/small and adds
    big/small once per output pixel in double precision, then truncates; the accumulated sum
    differs from (i + 0.5)·big/small in the last bit, which moves the truncation wherever the
    exact value is an integer (e.g. 292 of the size pairs up to 3,692). Python floats are C
    doubles and `accumulate` adds in the same order, so this reproduces it bit for bit.
    """
    step = big / small
    return [min(int(v), big - 1) for v in accumulate([0.5 * step] + [step] * (small - 1))]


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of label maps exactly as `PIL.Image.resize(NEAREST)`.

    Output pixel i reads input pixel ≈ floor((i + 0.5) · H / h) (pixel centres), with Pillow's
    accumulated double-precision positions (`_pil_nearest_index`); IRN/AMN/PSA resize their
    labels with PIL, and `F.interpolate(mode="nearest")` reads floor(i·H/h) instead.

    Args:
        labels: (..., H, W) integer tensor.
        size: (h, w).

    Returns:
        (..., h, w), same dtype and device.
    """
    big_h, big_w = labels.shape[-2:]
    h, w = int(size[0]), int(size[1])
    rows = torch.tensor(_pil_nearest_index(big_h, h), dtype=torch.long, device=labels.device)
    cols = torch.tensor(_pil_nearest_index(big_w, w), dtype=torch.long, device=labels.device)
    return labels[..., rows, :][..., cols]


# PSA / AffinityNet (arXiv:1803.10464): feature affinities and affinity labels from CAMs ---------
# `jiwoon-ahn/psa: tool/pyutils.py get_indices_of_pairs` uses the same half-disc directions and
# the same source window as `PathIndex` (radius 5: 34 directions, sources rows [0, h − 4), cols
# [4, w − 4)), so `PathIndex` serves AffinityNet training as it serves IRN.


def neighbour_pairs(size: tuple[int, int], radius: int, *, window: bool = False
                    ) -> tuple[Tensor, Tensor]:
    """Every pixel pair of an (h, w) map within `radius` (half-disc directions, each unordered
    pair once).

    Args:
        size: (h, w).
        radius: r ≥ 2 (PSA: 5).
        window: True keeps only the pairs whose source lies in the `PathIndex` window (rows
            [0, h − f), cols [f, w − f), f = ⌈r⌉ − 1), as PSA's `get_indices_of_pairs`, which its
            random walk also uses; False keeps every pair with both ends inside the map.

    Returns:
        src int64 (P,), dst int64 (P,) flat row-major indices; with `window`, direction-major
        in `PathIndex` order (src repeats `PathIndex.src_indices` once per direction).
    """
    h, w = int(size[0]), int(size[1])
    if window:
        index = PathIndex.build(radius, (h, w))
        src = index.src_indices.repeat(index.num_directions)
        return src, index.dst_indices.reshape(-1)
    full = torch.arange(h * w, dtype=torch.int64).view(h, w)
    srcs, dsts = [], []
    for (dy, dx), _ in search_directions(radius):
        y1 = h - dy
        x0, x1 = max(0, -dx), w - max(0, dx)
        if y1 <= 0 or x1 <= x0:
            continue
        srcs.append(full[:y1, x0:x1].reshape(-1))
        dsts.append(full[dy:dy + y1, x0 + dx:x1 + dx].reshape(-1))
    if not srcs:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    return torch.cat(srcs), torch.cat(dsts)


def _feature_distance(diff: Tensor, dim: int, distance: str) -> Tensor:
    if distance == "mean":
        return diff.abs().mean(dim=dim)
    if distance == "sum":
        return diff.abs().sum(dim=dim)
    raise ValueError(f"distance must be 'mean' or 'sum', got {distance!r}")


def feature_affinity(features: Tensor, index: PathIndex, *, distance: str = "mean") -> Tensor:
    """AffinityNet affinity a_ij = exp(−mean_c |f_c(i) − f_c(j)|) for every `index` pair.

    PSA's code averages the channel differences ("mean"); the paper writes the L1 norm ("sum").

    Args:
        features: (B, C, h, w) affinity features.
        index: `PathIndex` for (h, w).
        distance: "mean" (official code) or "sum" (paper) over the channels.

    Returns:
        (B, D, S) affinities in (0, 1], directions in `index` order.
    """
    if tuple(features.shape[-2:]) != index.size:
        raise ValueError(f"features are {tuple(features.shape[-2:])}, index is for {index.size}")
    flat = features.reshape(*features.shape[:2], -1)
    src = flat[..., index.src_indices.to(flat.device)].unsqueeze(2)  # (B, C, 1, S)
    dst = flat[..., index.dst_indices.to(flat.device)]  # (B, C, D, S)
    return torch.exp(-_feature_distance(src - dst, 1, distance))


def feature_pair_affinity(features: Tensor, src: Tensor, dst: Tensor, *, distance: str = "mean",
                          chunk: int = 32768) -> Tensor:
    """a_ij = exp(−mean_c |f_c(i) − f_c(j)|) for listed pairs of one feature map.

    Args:
        features: (C, h, w) affinity features.
        src: int64 (P,) flat indices into h·w.
        dst: int64 (P,) flat indices.
        distance: "mean" (official code) or "sum" (paper) over the channels.
        chunk: pairs per gather (bounds the (C, chunk) temporaries; 448 channels × 32768 pairs
            × 4 bytes ≈ 59 MB).

    Returns:
        (P,) affinities in (0, 1], dtype and device of `features`.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be (C, h, w), got {tuple(features.shape)}")
    flat = features.reshape(features.shape[0], -1)
    src, dst = src.to(flat.device), dst.to(flat.device)
    out = [torch.exp(-_feature_distance(flat[:, src[i:i + chunk]] - flat[:, dst[i:i + chunk]],
                                        0, distance))
           for i in range(0, src.numel(), chunk)]
    return torch.cat(out) if out else flat.new_zeros(0)


def background_stack(cams: Tensor, alpha: float) -> Tensor:
    """PSA's [background; CAMs] stack with background = (1 − max_c cam_c)^α.

    A large α shrinks the background (confident foreground), a small one grows it (PSA labels:
    α_low 4 / α_high 32; walk: 16).

    Args:
        cams: (K, H, W) foreground CAMs in [0, 1]; K may be 0.
        alpha: background power α.

    Returns:
        (K + 1, H, W), channel 0 the background; ones when K = 0.
    """
    if cams.ndim != 3:
        raise ValueError(f"cams must be (K, H, W), got {tuple(cams.shape)}")
    if cams.shape[0] == 0:
        return cams.new_ones((1, *cams.shape[1:]))
    bg = (1.0 - cams.amax(dim=0, keepdim=True)).clamp_min(0).pow(alpha)
    return torch.cat([bg, cams], dim=0)


def affinity_seed_labels(low: Tensor, high: Tensor, keys: Tensor) -> Tensor:
    """AffinityNet training labels from the two background-power score stacks
    (`jiwoon-ahn/psa: voc12/data.py ExtractAffinityLabelInRadius` inputs).

    With la = argmax(low) (background power α_low: large background, so its foreground is
    confident) and ha = argmax(high) (α_high: small background, so its background is confident),
    a pixel gets keys[la]; 255 (unsure) where la says background; 0 where ha says background.

    Args:
        low: (K + 1, H, W) scores at α_low (e.g. CRF marginals), channel 0 the background.
        high: (K + 1, H, W) scores at α_high, same channels.
        keys: int64 (K + 1,) class index of each channel, keys[0] = 0.

    Returns:
        int64 (H, W) in {0} ∪ keys ∪ {255}.
    """
    if low.shape != high.shape or low.ndim != 3 or keys.shape != (low.shape[0],):
        raise ValueError(f"low {tuple(low.shape)} and high {tuple(high.shape)} must be "
                         f"(K + 1, H, W) with keys of length K + 1, got {tuple(keys.shape)}")
    la = low.argmax(dim=0)
    ha = high.argmax(dim=0)
    labels = keys.to(la.device)[la]
    labels = torch.where(la == 0, torch.full_like(labels, IGNORE_INDEX), labels)
    return torch.where(ha == 0, torch.full_like(labels, BACKGROUND), labels)


def pooled_affinity_labels(low: Tensor, high: Tensor, keys: Tensor, cell: int) -> Tensor:
    """AffinityNet training labels of a crop at the feature resolution, PSA's way.

    `jiwoon-ahn/psa: train_aff.py` (`AvgPool2d(8)` on the cropped score maps) and
    `voc12/data.py AffDataset.__getitem__`: both score stacks are zero-padded to a multiple of
    `cell` and averaged over each cell × cell block (`skimage.measure.block_reduce`), then
    `affinity_seed_labels` runs on the pooled scores, and a cell whose pooled scores are all
    below 1e-5 (crop padding, which carries no score) becomes 255.

    Args:
        low, high: (K + 1, H, W) score stacks at α_low / α_high (zeros where the crop padded).
        keys: int64 (K + 1,) class index of each channel, keys[0] = 0.
        cell: block side (the feature stride, PSA 8).

    Returns:
        int64 (⌈H / cell⌉, ⌈W / cell⌉) in {0} ∪ keys ∪ {255}.
    """
    if low.shape != high.shape or low.ndim != 3:
        raise ValueError(f"low {tuple(low.shape)} and high {tuple(high.shape)} must be "
                         "(K + 1, H, W)")
    k = low.shape[0]
    height, width = low.shape[-2:]
    stack = F.pad(torch.cat([low, high]), (0, (-width) % cell, 0, (-height) % cell))
    pooled = F.avg_pool2d(stack[None], cell)[0]
    no_score = pooled.amax(dim=0) < 1e-5
    labels = affinity_seed_labels(pooled[:k], pooled[k:], keys)
    return labels.masked_fill(no_score, IGNORE_INDEX)
