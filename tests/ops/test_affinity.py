"""Path indices, boundary affinities and pair labels (IRN `misc/indexing.py`)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from wsss.ops.affinity import (
    PathIndex,
    affinity_from_boundary,
    affinity_labels,
    affinity_seed_labels,
    downsample_labels,
    pair_displacement,
    pooled_affinity_labels,
    search_directions,
)


def test_search_directions_half_disc() -> None:
    dirs = search_directions(5)
    assert len(dirs) == 34  # IRN inference radius
    lengths = [len(p) for _, p in dirs]
    assert lengths == sorted(lengths)
    seen = set()
    for (dy, dx), path in dirs:
        assert tuple(path[0]) == (dy, dx) and [0, 0] in path.tolist()
        assert dy > 0 or (dy == 0 and dx > 0)
        assert (-dy, -dx) not in seen
        seen.add((dy, dx))


def test_path_index_destinations_are_offsets() -> None:
    h, w = 7, 10
    index = PathIndex.build(3, (h, w))
    src = index.src_indices
    assert src.numel() == (h - 2) * (w - 4)
    for d, (dy, dx) in enumerate(index.directions.tolist()):
        torch.testing.assert_close(index.dst_indices[d], src + dy * w + dx)
    assert sum(p.shape[0] for p in index.path_indices) == index.num_directions


def test_affinity_from_boundary_is_one_minus_path_max() -> None:
    boundary = torch.zeros(1, 1, 6, 8)
    boundary[..., :, 4] = 0.8  # a vertical wall at column 4
    index = PathIndex.build(3, (6, 8))
    aff = affinity_from_boundary(boundary, index)[0]
    cols_src = index.src_indices % 8
    for d, (dy, dx) in enumerate(index.directions.tolist()):
        cols_dst = cols_src + dx
        low, high = torch.minimum(cols_src, cols_dst), torch.maximum(cols_src, cols_dst)
        crosses = (low <= 4) & (high >= 4)
        expected = torch.where(crosses, torch.tensor(0.2), torch.tensor(1.0))
        torch.testing.assert_close(aff[d], expected)


def test_affinity_labels_on_a_tiny_seed() -> None:
    seeds = torch.tensor([[0, 0, 1, 1],
                          [0, 255, 1, 2],
                          [0, 0, 2, 2]])
    index = PathIndex.build(2, (3, 4))  # directions (0, 1), (1, -1), (1, 0), (1, 1)
    bg_pos, fg_pos, neg = affinity_labels(seeds, index)
    flat = seeds.reshape(-1)
    for d in range(index.num_directions):
        for s, i in enumerate(index.src_indices.tolist()):
            j = int(index.dst_indices[d, s])
            a, b = int(flat[i]), int(flat[j])
            valid = a != 255 and b != 255
            assert bg_pos[d, s] == float(valid and a == b == 0)
            assert fg_pos[d, s] == float(valid and a == b and a > 0)
            assert neg[d, s] == float(valid and a != b)
    # Every pair is exactly one of the three, or touches an unsure pixel.
    assert torch.all(bg_pos + fg_pos + neg <= 1)
    batched = affinity_labels(seeds[None].repeat(2, 1, 1), index)
    torch.testing.assert_close(batched[0][1], bg_pos)


def test_pair_displacement_difference() -> None:
    index = PathIndex.build(2, (3, 4))
    disp = torch.randn(1, 2, 3, 4)
    pairs = pair_displacement(disp, index)
    flat = disp.reshape(1, 2, -1)
    d, s = 2, 1
    i, j = index.src_indices[s], index.dst_indices[d, s]
    torch.testing.assert_close(pairs[0, :, d, s], flat[0, :, i] - flat[0, :, j])


def test_downsample_labels_matches_pil_nearest() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (37, 52)).astype(np.uint8)
    ours = downsample_labels(torch.from_numpy(labels), (10, 13)).numpy()
    pil = np.asarray(Image.fromarray(labels).resize((13, 10), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(ours, pil)


def test_downsample_labels_matches_pil_nearest_over_many_sizes() -> None:
    # Pillow accumulates the sample positions in double precision; at exact-integer positions
    # (e.g. 75 -> 50: 1.5 + 49 * 1.5 lands on either side of an integer) a closed form
    # floor((i + 0.5) * H / h) picks the neighbour. Every pair up to 90 x 90 must match Pillow.
    src = np.arange(90, dtype=np.int32)
    mismatched_closed_form = 0
    for big in range(1, 91):
        row = Image.fromarray(np.ascontiguousarray(src[None, :big]))  # int32 -> mode "I"
        labels = torch.from_numpy(src[None, :big].copy())
        for small in range(1, 91):
            pil = np.asarray(row.resize((small, 1), Image.Resampling.NEAREST))[0]
            ours = downsample_labels(labels, (1, small))[0].numpy()
            np.testing.assert_array_equal(ours, pil, err_msg=f"{big} -> {small}")
            closed = np.minimum(np.floor((np.arange(small) + 0.5) * big / small), big - 1)
            mismatched_closed_form += int((closed != pil).any())
    assert mismatched_closed_form > 0  # the case the accumulation exists for is covered


def test_pooled_affinity_labels_average_the_scores_per_cell() -> None:
    keys = torch.tensor([0, 7])
    low = torch.zeros(2, 16, 16)
    high = torch.zeros(2, 16, 16)
    # cell (0, 0): the class wins on average though its centre pixel (4, 4) says background
    low[1, :8, :8], high[1, :8, :8] = 0.6, 0.6
    low[0, 4, 4], low[1, 4, 4] = 1.0, 0.0
    # cell (0, 1): α_low says background -> unsure
    low[0, :8, 8:], high[1, :8, 8:] = 0.9, 0.9
    # cell (1, 0): α_high says background -> background
    low[1, 8:, :8], high[0, 8:, :8] = 0.9, 0.9
    # cell (1, 1): crop padding, no score at all -> unsure (argmax alone would say background)
    labels = pooled_affinity_labels(low, high, keys, 8)
    assert labels.tolist() == [[7, 255], [0, 255]]
    assert affinity_seed_labels(low, high, keys)[4, 4] == 255  # the centre-pixel reading
    # a 12 x 8 crop is zero-padded to 16 x 8 and the padding counts in the mean (block_reduce's
    # cval = 0): 1.5e-5 on the 4 real rows of cell (1, 0) pools to 0.75e-5, below the 1e-5 cut
    low, high = torch.zeros(2, 12, 8), torch.zeros(2, 12, 8)
    low[1, :8], high[1, :8] = 0.9, 0.9
    low[1, 8:], high[1, 8:] = 1.5e-5, 1.5e-5
    assert pooled_affinity_labels(low, high, keys, 8).tolist() == [[7], [255]]
