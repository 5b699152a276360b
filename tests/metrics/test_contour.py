"""Contour F-score: boundary maps on hand-made arrays, tolerance, dilation, edge-case rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from wsss.metrics import (
    ContourMeter,
    boundary_prf,
    boundary_tolerance,
    contour_counts,
    contour_fscore,
    seg_to_boundary,
)
from wsss.metrics.contour import dilate_disk, disk


def test_seg_to_boundary_square():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    expected = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],
            [1, 1, 1, 0],
            [0, 0, 0, 0],
        ],
        bool,
    )
    out = seg_to_boundary(mask)
    assert out.dtype == bool and np.array_equal(out, expected)


def test_seg_to_boundary_border_rules():
    # Last column set: the boundary is the column left of it (last column uses only the bottom
    # neighbour, last row only the right one).
    mask = np.zeros((4, 4), bool)
    mask[:, 3] = True
    expected = np.zeros((4, 4), bool)
    expected[:, 2] = True
    assert np.array_equal(seg_to_boundary(mask), expected)
    # A region filling the image has no boundary; a single row uses right neighbours only.
    assert not seg_to_boundary(np.ones((5, 3), bool)).any()
    assert np.array_equal(seg_to_boundary(np.array([[0, 1, 1, 0]])), np.array([[1, 0, 1, 0]], bool))
    column = np.array([[0], [1], [1]])
    assert np.array_equal(seg_to_boundary(column), np.array([[1], [0], [0]], bool))
    # The bottom-right pixel is never a boundary.
    corner = np.zeros((3, 3), int)
    corner[2, 2] = 7
    expected = np.array([[0, 0, 0], [0, 1, 1], [0, 1, 0]], bool)
    assert np.array_equal(seg_to_boundary(corner), expected)


def test_tolerance_and_disk():
    assert boundary_tolerance(375, 500) == 5
    assert boundary_tolerance(120, 160) == 2  # 1.6 → 2
    assert boundary_tolerance(64, 64) == 1
    assert boundary_tolerance(64, 64, bound_th=3) == 3  # >= 1: pixels
    expected = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        bool,
    )
    assert np.array_equal(disk(2), expected)


@pytest.mark.parametrize("radius", [0, 1, 2, 5, 8])
def test_dilate_disk_equals_binary_dilation(radius):
    rng = np.random.default_rng(radius)
    for shape in [(1, 1), (1, 9), (9, 1), (13, 17), (40, 30)]:
        for density in (0.0, 0.01, 0.2):
            b = rng.random(shape) < density
            expected = ndimage.binary_dilation(b, structure=disk(radius), border_value=0)
            assert np.array_equal(dilate_disk(b, radius), expected)


def _reference_counts(pred, gt, num_classes, radius):
    """Brute-force reference: explicit neighbour rule and pairwise distances."""

    def bmap(m):
        h, w = m.shape
        out = np.zeros((h, w), bool)
        at = lambda y, x: bool(m[y, x]) if y < h and x < w else False  # noqa: E731
        for y in range(h):
            for x in range(w):
                if y == h - 1 and x == w - 1:
                    continue
                if y == h - 1:
                    out[y, x] = at(y, x) != at(y, x + 1)
                elif x == w - 1:
                    out[y, x] = at(y, x) != at(y + 1, x)
                else:
                    neighbours = ((0, 1), (1, 0), (1, 1))
                    out[y, x] = any(at(y, x) != at(y + dy, x + dx) for dy, dx in neighbours)
        return out

    def matched(src, dst):
        ps, pd = np.argwhere(src), np.argwhere(dst)
        if len(ps) == 0 or len(pd) == 0:
            return 0
        d2 = ((ps[:, None, :] - pd[None, :, :]) ** 2).sum(-1)
        return int((d2.min(1) <= radius * radius).sum())

    gt = np.where(gt == 255, 0, gt)
    counts = np.zeros((num_classes, 4), np.int64)
    for c in range(1, num_classes):
        bg, bp = bmap(gt == c), bmap(pred == c)
        counts[c] = (matched(bg, bp), matched(bp, bg), bg.sum(), bp.sum())
    return counts


def test_counts_match_brute_force_on_random_blobs():
    rng = np.random.default_rng(0)
    for _ in range(3):
        h, w = 30, 40
        gt = ndimage.zoom(rng.integers(0, 4, (4, 5)), (h / 4, w / 5), order=0)[:h, :w]
        gt[rng.random((h, w)) < 0.05] = 255
        pred = ndimage.zoom(rng.integers(0, 4, (5, 4)), (h / 5, w / 4), order=0)[:h, :w]
        pred[rng.random((h, w)) < 0.02] = 255  # abstained: in no class
        got = contour_counts(pred, gt, 4, bound_th=3)
        assert got.dtype == torch.int64 and got.shape == (4, 4)
        assert np.array_equal(got.numpy(), _reference_counts(pred, gt, 4, 3))
        assert not got[0].any()


def _square(h=120, w=160, top=30, left=40, size=50, label=1, shift=0):
    m = np.zeros((h, w), int)
    m[top : top + size, left + shift : left + shift + size] = label
    return m


def test_perfect_prediction_f_is_one():
    gt = _square()
    gt[90:110, 100:120] = 2
    counts = contour_counts(gt, gt, 3)
    for c in (1, 2):
        assert counts[c, 0] == counts[c, 1] == counts[c, 2] == counts[c, 3] > 0
    assert float(contour_fscore(counts)) == 1.0


def test_shift_within_and_beyond_tolerance():
    gt = _square()
    assert boundary_tolerance(*gt.shape) == 2
    within = boundary_prf(contour_counts(_square(shift=2), gt, 2))
    assert within[1].tolist() == [1.0, 1.0, 1.0]
    beyond = boundary_prf(contour_counts(_square(shift=3), gt, 2))
    p, r, f = beyond[1].tolist()
    # The two vertical edges (50 px each) no longer match; the horizontal ones still do.
    assert 0.3 < p < 1 and 0.3 < r < 1 and f < 1


def test_precision_is_the_predicted_side():
    gt = _square(size=30)
    pred = gt + _square(top=5, left=120, size=20)  # an extra predicted object far away
    p, r, f = boundary_prf(contour_counts(pred, gt, 2))[1].tolist()
    assert r == 1.0 and p < 1.0 and f == pytest.approx(2 * p / (p + 1))


def test_edge_case_rules():
    gt = _square(label=1)
    pred = _square(label=2)
    meter = ContourMeter(4)
    meter.update(pred, gt)
    prf = boundary_prf(meter.counts)
    assert torch.isnan(prf[0]).all()  # background row unused
    assert prf[1].tolist() == [1.0, 0.0, 0.0]  # only in GT
    assert prf[2].tolist() == [0.0, 1.0, 0.0]  # only predicted
    assert prf[3].tolist() == [1.0, 1.0, 1.0]  # in neither
    assert float(contour_fscore(meter.counts)) == pytest.approx(1 / 3)
    # P + R = 0 → F = 0
    counts = torch.tensor([[0, 0, 0, 0], [0, 0, 5, 7]])
    assert boundary_prf(counts)[1].tolist() == [0.0, 0.0, 0.0]


def test_ground_truth_void_counts_as_background():
    gt = _square()
    void = gt.copy()
    void[:, :20] = 255
    void[100:, :] = 255
    pred = _square(shift=4)
    assert torch.equal(contour_counts(pred, void, 2), contour_counts(pred, gt, 2))


def test_meter_accumulates_and_summarises():
    gt = _square()
    a, b = ContourMeter(3), ContourMeter(3)
    a.update(gt, gt)
    b.update(_square(shift=3), gt)
    total = ContourMeter(3)
    total.update(gt, gt)
    total.update(torch.from_numpy(_square(shift=3)), torch.from_numpy(gt))
    a.merge(b)
    a.all_reduce()
    assert torch.equal(a.counts, total.counts)
    summary = json.loads(json.dumps(a.summary(["background", "cat", "dog"])))
    assert set(summary["f"]) == {"cat", "dog"}
    assert summary["f"]["dog"] == 1.0
    assert 0 < summary["f"]["cat"] < 1
    assert summary["fscore"] == pytest.approx((summary["f"]["cat"] + 1.0) / 2)
    assert summary["counts"]["cat"] == a.counts[1].tolist()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape|same"):
        contour_counts(np.zeros((4, 5), int), np.zeros((4, 4), int), 3)
    with pytest.raises(ValueError, match="gt.*9"):
        contour_counts(np.zeros((4, 4), int), np.full((4, 4), 9), 3)
