"""Confusion matrix and reductions: known answers on hand-made masks, ignore/abstain handling,
absent-class conventions, stacks, and a two-process gloo reduction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wsss.metrics import (
    ConfusionMeter,
    ContourMeter,
    ThresholdSweep,
    confusion_matrix,
    coverage,
    iou,
    miou,
    pixel_accuracy,
    precision,
    recall,
)

# 4×4 ground truth: background 0, class 1 (top-left 2×2), class 2 (bottom row), one void pixel.
GT = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 255],
        [0, 0, 0, 0],
        [2, 2, 2, 2],
    ]
)


def test_matrix_layout_rows_gt_columns_pred():
    gt = np.array([[0, 1], [2, 2]])
    pred = np.array([[1, 1], [0, 255]])
    conf = confusion_matrix(pred, gt, 3)
    assert conf.dtype == torch.int64 and conf.shape == (3, 4)
    expected = torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1]])
    assert torch.equal(conf, expected)


def test_perfect_prediction_gives_iou_one_for_present_classes():
    pred = np.where(GT == 255, 0, GT)
    conf = confusion_matrix(pred, GT, 4)
    assert conf.sum() == 15  # the void pixel is not counted
    ious = iou(conf)
    assert torch.equal(ious[:3], torch.ones(3, dtype=torch.float64))
    assert math.isnan(ious[3])  # class 3 absent from GT and prediction
    assert float(miou(conf)) == 1.0
    assert float(miou(conf, absent="zero")) == pytest.approx(3 / 4)
    assert float(pixel_accuracy(conf)) == 1.0


def test_all_background_prediction():
    pred = np.zeros_like(GT)
    conf = confusion_matrix(pred, GT, 3)
    bg, fg = 7, 8  # labelled background / foreground pixels
    ious = iou(conf)
    assert ious[0] == pytest.approx(bg / (bg + fg))
    assert ious[1] == 0 and ious[2] == 0
    assert float(miou(conf)) == pytest.approx(bg / (bg + fg) / 3)
    assert float(pixel_accuracy(conf)) == pytest.approx(bg / 15)


def test_ground_truth_void_never_changes_any_count():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (20, 30))
    pred = rng.integers(0, 5, (20, 30))
    void = rng.random((20, 30)) < 0.3
    gt_void = np.where(void, 255, gt)
    conf = confusion_matrix(pred, gt_void, 5)
    expected = confusion_matrix(pred[~void], gt[~void], 5)
    assert torch.equal(conf, expected)
    # Whatever is predicted under void pixels, nothing changes.
    pred2 = np.where(void, rng.integers(0, 5, (20, 30)), pred)
    pred2[void & (rng.random((20, 30)) < 0.5)] = 255
    assert torch.equal(confusion_matrix(pred2, gt_void, 5), conf)


def test_absent_class_nan_or_zero():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    conf = confusion_matrix(pred, gt, 3)
    nan_iou = iou(conf, absent="nan")
    zero_iou = iou(conf, absent="zero")
    assert math.isnan(nan_iou[2]) and zero_iou[2] == 0
    assert nan_iou[0] == pytest.approx(1 / 2) and nan_iou[1] == pytest.approx(2 / 3)
    assert float(miou(conf)) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert float(miou(conf, absent="zero")) == pytest.approx((1 / 2 + 2 / 3) / 3)
    # A class only predicted (no GT) is not absent: IoU 0 in both conventions.
    conf2 = confusion_matrix(np.array([[2, 0, 1, 1]]), gt, 3)
    assert iou(conf2)[2] == 0 and iou(conf2, absent="zero")[2] == 0
    with pytest.raises(ValueError, match="absent"):
        iou(conf, absent="ignore")


def test_abstained_pixels_lower_coverage_not_iou():
    pred = np.where(GT == 255, 0, GT)
    abstain = pred.copy()
    abstain[0, 0] = 255  # a class-1 pixel
    abstain[2, 1] = 255  # a background pixel
    conf = confusion_matrix(abstain, GT, 3)
    assert conf[1, 3] == 1 and conf[0, 3] == 1 and conf[:, 3].sum() == 2
    assert torch.equal(iou(conf), torch.ones(3, dtype=torch.float64))
    assert float(coverage(conf)) == pytest.approx(13 / 15)
    assert float(coverage(confusion_matrix(pred, GT, 3))) == 1.0
    # Abstaining everywhere: nothing to score, coverage 0.
    conf_none = confusion_matrix(np.full_like(GT, 255), GT, 3)
    assert torch.isnan(iou(conf_none)).all() and float(coverage(conf_none)) == 0.0


def test_precision_recall_by_hand():
    gt = np.array([[0, 0, 0, 1, 1, 1, 1, 2]])
    pred = np.array([[0, 1, 1, 1, 1, 0, 255, 0]])
    conf = confusion_matrix(pred, gt, 3)
    # class 1: TP 2, predicted 4, GT (non-abstained) 3
    assert precision(conf)[1] == pytest.approx(2 / 4)
    assert recall(conf)[1] == pytest.approx(2 / 3)
    # class 0: TP 1, predicted 3, GT 3
    assert precision(conf)[0] == pytest.approx(1 / 3)
    assert recall(conf)[0] == pytest.approx(1 / 3)
    # class 2: never predicted → precision NaN; recall 0
    assert math.isnan(precision(conf)[2]) and recall(conf)[2] == 0
    assert iou(conf)[1] == pytest.approx(2 / (4 + 3 - 2))


def test_stacks_reduce_over_last_two_dims():
    rng = np.random.default_rng(1)
    mats = [confusion_matrix(rng.integers(0, 4, (8, 8)), rng.integers(0, 4, (8, 8)), 4)
            for _ in range(6)]
    stack = torch.stack(mats).reshape(2, 3, 4, 5)
    assert iou(stack).shape == (2, 3, 4)
    assert miou(stack).shape == (2, 3)
    for fn in (precision, recall):
        assert fn(stack).shape == (2, 3, 4)
    assert pixel_accuracy(stack).shape == (2, 3) and coverage(stack).shape == (2, 3)
    for i, mat in enumerate(mats):
        np.testing.assert_array_equal(iou(stack).reshape(6, 4)[i].numpy(), iou(mat).numpy())
        assert float(miou(stack).reshape(6)[i]) == pytest.approx(float(miou(mat)))


def test_batched_and_torch_inputs():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 3, (2, 5, 6)).astype(np.uint8)
    pred = rng.integers(0, 3, (2, 5, 6))
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 3)
    per_image = confusion_matrix(pred[0], gt[0], 3) + confusion_matrix(pred[1], gt[1], 3)
    assert torch.equal(conf, per_image)
    assert torch.equal(conf, confusion_matrix(pred, gt, 3))


def test_bad_inputs_raise():
    gt = np.array([[0, 1], [2, 255]])
    with pytest.raises(ValueError, match="gts.*7"):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 7], [2, 255]]), 3)
    with pytest.raises(ValueError, match="preds.*-1"):
        confusion_matrix(np.array([[0, -1], [2, 0]]), gt, 3)
    with pytest.raises(ValueError, match="preds.*3"):
        confusion_matrix(np.array([[0, 3], [2, 0]]), gt, 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), int), gt, 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.zeros((2, 2)), gt, 3)


def test_meter_update_merge_summary_is_json():
    rng = np.random.default_rng(3)
    pairs = [(rng.integers(0, 3, (6, 7)), rng.integers(0, 3, (6, 7))) for _ in range(4)]
    pairs[0][0][0, 0] = 255
    a, b, total = ConfusionMeter(4), ConfusionMeter(4), ConfusionMeter(4)
    for i, (pred, gt) in enumerate(pairs):
        (a if i % 2 else b).update(pred, gt)
        total.update(pred, gt)
    a.merge(b)
    assert torch.equal(a.matrix, total.matrix)
    a.all_reduce()  # one process: identity
    assert torch.equal(a.matrix, total.matrix)
    names = ["background", "cat", "dog", "cow"]
    summary = json.loads(json.dumps(a.summary(names)))
    assert summary["num_pixels"] == 4 * 42
    assert summary["iou"]["cow"] is None  # class 3 absent: NaN → None
    assert summary["miou"] == pytest.approx(float(miou(total.matrix)))
    assert summary["coverage"] == pytest.approx((4 * 42 - 1) / (4 * 42))
    assert set(summary["recall"]) == set(names)
    assert a.summary(absent="zero")["iou"]["3"] == 0.0
    assert torch.equal(ConfusionMeter(3).matrix, torch.zeros(3, 4, dtype=torch.int64))


def _ddp_worker(rank: int, world: int, init_file: str, data: dict, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        conf, contour = ConfusionMeter(4), ContourMeter(4)
        sweep = ThresholdSweep(4, [0.1, 0.5, 0.9])
        for i in range(rank, len(data["gts"]), world):
            conf.update(data["preds"][i], data["gts"][i])
            contour.update(data["preds"][i], data["gts"][i])
            sweep.update(data["cams"][i], data["keys"][i], data["gts"][i], name=f"img{i}")
        conf.all_reduce()
        contour.all_reduce()
        sweep.all_reduce()
        queue.put((rank, conf.matrix.numpy(), contour.counts.numpy(), sweep.stack.numpy(),
                   sweep.per_image_best_thresholds()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch: ~5-15 s
def test_two_process_gloo_matches_single_process(tmp_path):
    rng = np.random.default_rng(4)
    n_img = 5
    data = {
        "gts": [rng.choice([0, 1, 2, 3, 255], (12, 10)) for _ in range(n_img)],
        "preds": [rng.integers(0, 4, (12, 10)) for _ in range(n_img)],
        "cams": [rng.random((2, 12, 10), dtype=np.float32) for _ in range(n_img)],
        "keys": [np.array([1, 3]) for _ in range(n_img)],
    }
    conf, contour, sweep = ConfusionMeter(4), ContourMeter(4), ThresholdSweep(4, [0.1, 0.5, 0.9])
    for i in range(n_img):
        conf.update(data["preds"][i], data["gts"][i])
        contour.update(data["preds"][i], data["gts"][i])
        sweep.update(data["cams"][i], data["keys"][i], data["gts"][i], name=f"img{i}")
    ctx = mp.get_context("spawn")  # fork is unsafe once torch's OpenMP pool has run
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"), data, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = {}
        for _ in procs:
            rank, *values = queue.get(timeout=120)
            results[rank] = values
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    for rank in (0, 1):
        matrix, counts, stack, best = results[rank]
        assert np.array_equal(matrix, conf.matrix.numpy())
        assert np.array_equal(counts, contour.counts.numpy())
        assert np.array_equal(stack, sweep.stack.numpy())
        assert best == sweep.per_image_best_thresholds()
