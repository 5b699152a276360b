"""Parity with the official evaluation code (docs/methods/evaluation.md §6 of the method notes):
chainercv's confusion as used by IRN/AMN, SEAM/ICAM `do_python_eval`, 1-Stage `compute_jaccard`,
ICAM's contour F-score, PSA's PolyOptimizer, against outputs stored in
tests/fixtures/parity/evaluation/ (made by tests/fixtures/parity/make_evaluation.py; its
docstring says how). wsss is run through its user path (`evaluate_masks` / `evaluate_cams` on
files in a temporary folder) wherever one exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsss.config import load_config
from wsss.evaluation import evaluate_cams, evaluate_masks
from wsss.io import save_cams, save_mask
from wsss.metrics import (
    ConfusionMeter,
    ContourMeter,
    ThresholdSweep,
    boundary_tolerance,
    contour_counts,
    default_thresholds,
    seg_to_boundary,
)
from wsss.ops.cam import cams_to_mask

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "voc"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "evaluation"
NUM_IMAGES = 4
N = 21  # VOC classes with background


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        out = {k: data[k] for k in data.files}
    meta = json.loads(str(out.pop("meta")))
    assert meta["how"]
    return out


@pytest.fixture(scope="module")
def inputs() -> dict[str, list[np.ndarray]]:
    """Per image: gt (255 void), pred, pred255 (with abstaining 255 blobs), float32 cams
    (quantised levels / 255, as the generator fed them), 1-based keys, and ICAM-form cams (each
    pixel's first arg-max channel only)."""
    x = _load("inputs")
    out: dict[str, list[np.ndarray]] = {k: [] for k in
                                        ("gt", "pred", "pred255", "cams", "keys", "icam")}
    for i in range(NUM_IMAGES):
        cams = x[f"cams_q_{i}"].astype(np.float32) / np.float32(255)
        first = cams.argmax(0)[None] == np.arange(len(cams))[:, None, None]
        out["gt"].append(x[f"gt_{i}"])
        out["pred"].append(x[f"pred_{i}"])
        out["pred255"].append(x[f"pred255_{i}"])
        out["cams"].append(cams)
        out["keys"].append(x[f"keys_{i}"])
        out["icam"].append(np.where(first, cams, 0).astype(np.float32))
    return out


class _Split:
    """The dataset interface `evaluate_masks` / `evaluate_cams` read: names and GT masks."""

    num_classes = N - 1
    class_names = [f"c{i}" for i in range(N)]
    has_masks = True
    root = Path("fixture")

    def __init__(self, gts: list[np.ndarray]) -> None:
        self.gts = gts
        self.names = [f"img{i}" for i in range(len(gts))]

    def load_mask(self, index: int) -> np.ndarray:
        return self.gts[index]


def _preset(name: str) -> Any:
    return load_config(PRESETS / f"{name}.yaml")


def _ious(result: dict) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in result["iou"].values()])


def _write_masks(folder: Path, masks: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        save_mask(folder / f"img{i}.png", m)
    return folder


def _write_cams(folder: Path, cams: list[np.ndarray], keys: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (c, k) in enumerate(zip(cams, keys, strict=True)):
        save_cams(folder / f"img{i}.npz", c, k)
    return folder


# chainercv (IRN, AMN) -------------------------------------------------------------------------


def test_confusion_matches_chainercv(inputs) -> None:
    """`calc_semantic_segmentation_confusion` (GT 255 → −1 ignored; IRN maps predicted 255 → 0)
    equals the N×N block of wsss's matrix, whose abstain column is then empty."""
    f = _load("chainercv_irn_amn")
    meter = ConfusionMeter(N)
    for pred, gt in zip(inputs["pred255"], inputs["gt"], strict=True):
        meter.update(np.where(pred == 255, 0, pred), gt)
    np.testing.assert_array_equal(meter.matrix[:, :N].numpy(), f["confusion_pred255_as_0"])
    assert int(meter.matrix[:, N].sum()) == 0


def test_cam_evaluation_matches_irn_eval_cam(inputs, tmp_path) -> None:
    """IRN `step/eval_cam.py`: argmax over [0.15 plane; high_res] through the keys, chainercv
    confusion, IoU with NaN for absent classes, nanmean — wsss's fixed-threshold evaluation and
    its sweep at the same τ."""
    f = _load("chainercv_irn_amn")
    tau = _preset("cam_baseline").method.cam_eval_threshold
    assert tau == 0.15
    cam_dir = _write_cams(tmp_path / "cams", inputs["cams"], inputs["keys"])
    result = evaluate_cams(cam_dir, _Split(inputs["gt"]), threshold=tau,
                           thresholds=np.array([tau]))
    np.testing.assert_allclose(_ious(result["fixed"]), f["irn_eval_cam_iou"], rtol=1e-12)
    assert result["fixed"]["miou"] == pytest.approx(float(f["irn_eval_cam_miou"]), rel=1e-12)
    assert np.isnan(f["irn_eval_cam_iou"][3:7]).all()  # absent classes are NaN, not 0
    sweep = ThresholdSweep(N, default_thresholds(step=0.05))
    for cams, keys, gt in zip(inputs["cams"], inputs["keys"], inputs["gt"], strict=True):
        sweep.update(cams, keys, gt)
    assert sweep.miou_at(tau) == pytest.approx(float(f["irn_eval_cam_miou"]), rel=1e-12)


def test_cam_evaluation_matches_amn_eval_amn_cam(inputs, tmp_path) -> None:
    """AMN `step/eval_amn_cam.py`: `high_res` holds a background channel first, dropped before
    the same rule at τ = 0.25; wsss drops a key-0 channel of a CAM file."""
    f = _load("chainercv_irn_amn")
    tau = _preset("amn").method.amn_cam_eval_threshold
    assert tau == 0.25
    with_bg = [np.concatenate([1 - c.max(0, keepdims=True), c]) for c in inputs["cams"]]
    keys = [np.concatenate([[0], k]) for k in inputs["keys"]]
    cam_dir = _write_cams(tmp_path / "amn_cams", with_bg, keys)
    result = evaluate_cams(cam_dir, _Split(inputs["gt"]), threshold=tau,
                           thresholds=np.array([tau]))
    np.testing.assert_allclose(_ious(result["fixed"]), f["amn_eval_cam_iou"], rtol=1e-12)
    assert result["fixed"]["miou"] == pytest.approx(float(f["amn_eval_cam_miou"]), rel=1e-12)


def test_mask_evaluation_matches_irn_eval_sem_seg(inputs, tmp_path) -> None:
    """IRN `step/eval_sem_seg.py` maps predicted 255 to background before counting; wsss counts
    a predicted 255 as abstained, so masks are written as the script reads them."""
    f = _load("chainercv_irn_amn")
    masks = [np.where(p == 255, 0, p).astype(np.uint8) for p in inputs["pred255"]]
    result = evaluate_masks(_write_masks(tmp_path / "masks", masks), _Split(inputs["gt"]),
                            contour=False)
    np.testing.assert_allclose(_ious(result), f["irn_eval_sem_seg_iou"], rtol=1e-12)
    assert result["miou"] == pytest.approx(float(f["irn_eval_sem_seg_miou"]), rel=1e-12)


# SEAM / ICAM do_python_eval (absent class = 0, counted) ---------------------------------------


def _as_percent(result: dict) -> np.ndarray:
    return np.append(_ious(result), result["miou"]) * 100


# ICAM divides its counts by 1e5 before adding the 1e-10 of the IoU denominator: relative 1e-5 /
# count, up to 1e-7 here.
ICAM_RTOL = 1e-7


@pytest.mark.parametrize(("official", "rtol"), [("seam_png", 1e-9), ("icam_png", ICAM_RTOL)])
def test_mask_evaluation_matches_do_python_eval(inputs, tmp_path, official: str,
                                                rtol: float) -> None:
    """SEAM `evaluation.py` / ICAM `eval_cam.py` on PNGs: IoU = TP / (T + P − TP + 1e-10), an
    absent class counts 0 in the mean (ICAM's counters are floats divided by 1e5)."""
    f = _load("seam_icam_eval")
    result = evaluate_masks(_write_masks(tmp_path / "png", inputs["pred"]), _Split(inputs["gt"]),
                            absent="zero", contour=False)
    np.testing.assert_allclose(_as_percent(result), f[official], rtol=rtol, atol=1e-9)


def test_cam_evaluation_matches_seam_threshold_and_curve(inputs, tmp_path) -> None:
    """SEAM `do_python_eval(input_type='npy', threshold=0.26)` (the SEAM base of wsss's ICAM
    method) and its `--curve` loop t = 0.00 .. 0.59, equal to wsss's sweep on SEAM's grid."""
    f = _load("seam_icam_eval")
    tau = _preset("icam").method.seam_cam_eval_threshold
    assert tau == 0.26
    cam_dir = _write_cams(tmp_path / "cams", inputs["cams"], inputs["keys"])
    grid = default_thresholds(stop=0.6)
    result = evaluate_cams(cam_dir, _Split(inputs["gt"]), threshold=tau, thresholds=grid,
                           absent="zero")
    np.testing.assert_allclose(_as_percent(result["fixed"]), f["seam_npy_026"], rtol=1e-9,
                               atol=1e-9)
    sweep = ThresholdSweep(N, grid)
    for cams, keys, gt in zip(inputs["cams"], inputs["keys"], inputs["gt"], strict=True):
        sweep.update(cams, keys, gt)
    np.testing.assert_array_equal(grid, np.arange(60) / 100.0)
    np.testing.assert_allclose(sweep.miou_curve(absent="zero") * 100, f["seam_curve"],
                               rtol=1e-9, atol=1e-9)


def test_icam_cam_evaluation_equals_threshold_one_half(inputs, tmp_path) -> None:
    """ICAM `eval_cam.py` (npy): background = 1 − Σ_c cam_c, then argmax. ICAM's CAMs keep one
    class per pixel, so 1 − Σ = 1 − max and the rule is "foreground when max > 0.5": wsss's
    ICAM preset evaluates its CAMs at the fixed threshold 0.5."""
    f = _load("seam_icam_eval")
    tau = _preset("icam").method.cam_eval_threshold
    assert tau == 0.5
    cam_dir = _write_cams(tmp_path / "icam", inputs["icam"], inputs["keys"])
    result = evaluate_cams(cam_dir, _Split(inputs["gt"]), threshold=tau,
                           thresholds=np.array([tau]), absent="zero")
    np.testing.assert_allclose(_as_percent(result["fixed"]), f["icam_npy"], rtol=ICAM_RTOL,
                               atol=1e-9)


# 1-Stage compute_jaccard ----------------------------------------------------------------------


def test_jaccard_matches_one_stage_compute_jaccard(inputs) -> None:
    """`utils/metrics.py compute_jaccard`: tp / max(1e-3, tp + fp + fn), absent classes 0;
    precision and recall 0 where wsss says NaN (never predicted / no GT)."""
    from wsss.metrics import iou, precision, recall

    f = _load("one_stage_jaccard")
    meter = ConfusionMeter(N)
    for pred, gt in zip(inputs["pred"], inputs["gt"], strict=True):
        meter.update(pred, gt)
    np.testing.assert_allclose(iou(meter.matrix, absent="zero").numpy(), f["pred_jaccard"],
                               rtol=1e-12)
    np.testing.assert_allclose(torch.nan_to_num(precision(meter.matrix)).numpy(),
                               f["pred_precision"], rtol=1e-12)
    np.testing.assert_allclose(torch.nan_to_num(recall(meter.matrix)).numpy(), f["pred_recall"],
                               rtol=1e-12)


def test_abstain_column_gives_the_official_miss_convention(inputs) -> None:
    """The official scripts (compute_jaccard, SEAM/ICAM) count a predicted 255 on labelled GT as
    a miss of the GT class; wsss keeps those pixels in its abstain column (excluded from IoU,
    reported as coverage), from which the official numbers follow exactly."""
    f = _load("one_stage_jaccard")
    meter = ConfusionMeter(N)
    for pred, gt in zip(inputs["pred255"], inputs["gt"], strict=True):
        meter.update(pred, gt)
    m = meter.matrix.double()
    assert float(m[:, N].sum()) > 0
    tp = torch.diagonal(m[:, :N])
    gt_total, pred_total = m.sum(1), m[:, :N].sum(0)  # rows include the abstained pixels
    official_iou = tp / (gt_total + pred_total - tp).clamp_min(1e-3)
    np.testing.assert_allclose(official_iou.numpy(), f["pred255_jaccard"], rtol=1e-12)
    np.testing.assert_allclose((tp / gt_total.clamp_min(1e-3)).numpy(), f["pred255_recall"],
                               rtol=1e-12)


# Contour F-score (ICAM contour_fscore.py) -----------------------------------------------------


def test_boundary_map_matches_seg2bmap(inputs) -> None:
    f = _load("contour")
    np.testing.assert_array_equal(seg_to_boundary(inputs["gt"][0] == 7), f["seg2bmap_gt7"])
    np.testing.assert_array_equal(seg_to_boundary(f["random_mask"]), f["seg2bmap_random"])


def test_contour_counts_match_f_matches(inputs) -> None:
    """`f_matches(g, p)` as `main()` calls it (GT first) returns (Σ b_g·dil(b_p), Σ b_p·dil(b_g),
    n_g, n_p) = wsss's (m_a, m_b, n_gt, n_pred), GT void counted as background."""
    f = _load("contour")
    assert boundary_tolerance(375, 500) == 5  # 0.008 · 625 = 5.0 exactly: no ceil to 6
    for i, (pred, gt) in enumerate(zip(inputs["pred"], inputs["gt"], strict=True)):
        ours = contour_counts(pred, gt, N).numpy()
        np.testing.assert_array_equal(ours[1:], f["f_matches"][i, 1:], err_msg=f"image {i}")


def test_contour_fscore_matches_main(inputs, tmp_path) -> None:
    """`contour_fscore.py main()` (printed mean F, %, 3 decimals) on PNGs through wsss's
    `evaluate_masks`, and on ICAM CAM dicts (`--is_cam`: bg = 1 − Σ cam; `--bg_threshold 0.3`)
    through `cams_to_mask` at 0.5 and 0.3."""
    f = _load("contour")
    result = evaluate_masks(_write_masks(tmp_path / "png", inputs["pred"]), _Split(inputs["gt"]))
    assert result["contour"]["fscore"] * 100 == pytest.approx(float(f["main_png"]), abs=5e-4)
    for tau, official in ((0.5, f["main_cam"]), (0.3, f["main_cam_bg03"])):
        meter = ContourMeter(N)
        for cams, keys, gt in zip(inputs["icam"], inputs["keys"], inputs["gt"], strict=True):
            meter.update(cams_to_mask(cams, keys, bg_threshold=tau), gt)
        assert meter.summary()["fscore"] * 100 == pytest.approx(float(official), abs=5e-4)


# PSA PolyOptimizer --------------------------------------------------------------------------


def test_affinitynet_schedule_matches_psa_poly_optimizer() -> None:
    """PSA `PolyOptimizer` (train_cls.py / train_aff.py): lr_g · (1 − k / max_step)^0.9 in step
    k, held after max_step; SGD gets the weight decay as its momentum. The preset's lr, head
    multiplier and weight decay give the official lr sequence with wsss's schedule; with
    momentum = the weight decay (the official slip, which the preset sets) the parameters follow
    the official ones exactly."""
    from wsss.engine.trainer import build_optimizer, poly_lambda

    f = _load("psa_poly")
    max_step = int(f["max_step"])
    cfg = _preset("cam_affinitynet")
    for t in (cfg.train, cfg.method.affinitynet.train):
        assert (t.lr, t.head_lr_mult, t.weight_decay, t.poly_power) == (
            float(f["base_lr"]), 10.0, float(f["weight_decay"]), 0.9)
    assert float(f["momentum"]) == float(f["weight_decay"])
    grads = torch.from_numpy(f["grads"])

    def run(momentum: float) -> tuple[np.ndarray, np.ndarray]:
        params = [torch.nn.Parameter(torch.from_numpy(f["init_w"]).float()),
                  torch.nn.Parameter(torch.from_numpy(f["init_head"]).float())]
        optimizer = build_optimizer(
            [{"params": [params[0]], "lr": cfg.train.lr},
             {"params": [params[1]], "lr": cfg.train.lr * cfg.train.head_lr_mult}],
            name="sgd", momentum=momentum, weight_decay=cfg.train.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(max_step, 0.9))
        lrs, traj = [], []
        for _ in range(max_step):
            params[0].grad, params[1].grad = grads[0].clone(), grads[1].clone()
            lrs.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            schedule.step()
            traj.append([p.detach().numpy().copy() for p in params])
        return np.array(lrs), np.array(traj)

    lrs, traj = run(float(f["momentum"]))
    np.testing.assert_allclose(lrs, f["lr"][:max_step], rtol=1e-12)
    # The official loop may run past max_step; it keeps the last lr (wsss stops at max_step).
    np.testing.assert_allclose(f["lr"][max_step:], f["lr"][max_step - 1:max_step].repeat(
        len(f["lr"]) - max_step, 0))
    np.testing.assert_allclose(traj, f["params"][:max_step], rtol=1e-6, atol=1e-7)
    # The preset sets the official effective momentum, so its run is the official one.
    assert cfg.train.momentum == cfg.method.affinitynet.train.momentum == float(f["momentum"])


# IRN helpers not covered by the irn_amn group ---------------------------------------------------


def test_strided_sizes_match_irn_imutils() -> None:
    from wsss.ops.cam import strided_size, strided_up_size

    f = _load("irn_misc")
    for i, size in enumerate(f["sizes"]):
        for j, stride in enumerate(f["strides"]):
            hw = (int(size[0]), int(size[1]))
            assert strided_size(hw, int(stride)) == tuple(f["strided"][i, j])
            assert strided_up_size(hw, int(stride)) == tuple(f["strided_up"][i, j])


@pytest.mark.parametrize("exp_times", [0, 2])
def test_dense_transition_matrix_matches_irn_to_transition_matrix(exp_times: int) -> None:
    """`propagate_to_edge`'s matrix: path affinities on the edge map padded with 1, made dense
    (symmetric, unit diagonal), cropped, A^β column-normalised, squared `exp_times` times."""
    from wsss.ops.random_walk import transition_matrix_dense

    f = _load("irn_misc")
    assert np.allclose(f["dense_aff"], f["dense_aff"].T) and np.all(np.diag(f["dense_aff"]) == 1)
    ours = transition_matrix_dense(torch.from_numpy(f["edge"]), radius=5, beta=10.0,
                                   exp_times=exp_times)
    np.testing.assert_allclose(ours.numpy(), f[f"trans_{exp_times}"], atol=2e-6)
    np.testing.assert_allclose(ours.sum(0).numpy(), 1.0, atol=1e-5)


# ICAM infer_cam.py CAM post-processing --------------------------------------------------------


class _ViewLogits(torch.nn.Module):
    """The generator's stand-in network (`make_evaluation.view_logits`): a 1×1 convolution then
    4×4 average pooling (ceil mode), for the CAM and the PCM branch."""

    def __init__(self, f: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.w = {k: torch.from_numpy(f[f"w_{k}"]) for k in "ab"}
        self.b = {k: torch.from_numpy(f[f"b_{k}"]) for k in "ab"}

    def _logits(self, x: torch.Tensor, k: str) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(
            torch.nn.functional.conv2d(x, self.w[k], self.b[k]), 4, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self._logits(x, "a"), "logits_rv": self._logits(x, "b")}


def test_icam_cams_match_infer_cam_post_processing() -> None:
    """`infer_cam.py`: views at 0.5 / 1 / 1.5 / 2 + flips, ½(cam + cam_rv) label-conditioned,
    resized to the image, unflipped, averaged, per-pixel maximum kept, / (max + 1e-5)."""
    from wsss.methods.icam import icam_cams

    f = _load("icam_infer_cam")
    mcfg = _preset("icam").method
    assert list(mcfg.cam_scales) == [0.5, 1.0, 1.5, 2.0] and mcfg.cam_flip
    with torch.no_grad():
        cams, keys = icam_cams(_ViewLogits(f), f["image"], f["label"],
                               scales=list(mcfg.cam_scales), flip=mcfg.cam_flip,
                               device=torch.device("cpu"))
    present = np.flatnonzero(f["label"])
    assert keys.tolist() == (present + 1).tolist()
    # float32 rounding (4e-7 here); a missing 1e-5 in the max-norm would move the peaks by 1e-5.
    np.testing.assert_allclose(cams.numpy(), f["norm_cam"][present], rtol=0, atol=2e-6)
    assert not f["norm_cam"][np.flatnonzero(f["label"] == 0)].any()


# ICAM train_cam.py loss terms -----------------------------------------------------------------


@pytest.mark.parametrize(("case", "pooling", "weight"), [(0, "avg", 0.8), (1, "max", 0.0)])
def test_icam_losses_match_train_cam(case: int, pooling: str, weight: float) -> None:
    """`train_cam.py`'s loop body on the same network outputs: (1 − λ)·pooled + λ·sampled
    classification (same torch RNG stream), MLSM of the max-pooled PCM probabilities over C+1,
    ER (four terms) and ECR (two terms) on the views at the second view's size; the total and
    its gradient."""
    from wsss.methods.icam import icam_losses

    f = _load("icam_losses")
    cfg = load_config(PRESETS / "icam.yaml", [f"method.pooling={pooling}",
                                              f"method.sampling_weight={weight}",
                                              "method.fsl_weight=0"]).method
    assert (cfg.num_samples, cfg.rv_weight, cfg.view_scale) == (100, 1.0, 0.3)
    net = _ViewLogits(f)
    params = [torch.nn.Parameter(t) for t in (*net.w.values(), *net.b.values())]
    net.w = dict(zip("ab", params[:2], strict=True))
    net.b = dict(zip("ab", params[2:], strict=True))
    torch.manual_seed(5)
    terms = icam_losses(net, torch.from_numpy(f["img1"]), torch.from_numpy(f["labels"]), cfg)
    o = {k.split("/", 1)[1]: v for k, v in f.items() if k.startswith(f"{case}/")}

    def close(ours: torch.Tensor, official: np.ndarray | float) -> None:
        assert float(ours.detach()) == pytest.approx(float(official), rel=2e-6, abs=1e-7)

    close(terms["cls_pool"], (1 - weight) * (o["loss_cls1"] + o["loss_cls2"]))
    if weight > 0:
        close(terms["cls_sample"], weight * (o["loss_cls1_is"] + o["loss_cls2_is"]))
    else:
        assert "cls_sample" not in terms
    close(terms["cls_rv"], o["loss_cls1_rv"] + o["loss_cls2_rv"])
    close(terms["er"], o["loss_er"])
    close(terms["ecr"], o["loss_ecr"])
    total = sum(terms.values())
    close(total, o["loss"])
    total.backward()
    for k, p in zip(("w_a", "w_b", "b_a", "b_b"), params, strict=True):
        np.testing.assert_allclose(p.grad.numpy(), o[f"grad_{k}"], rtol=1e-4, atol=1e-6)


# SEAM train_SEAM.py loss terms ----------------------------------------------------------------


def test_seam_helpers_match_train_seam() -> None:
    from wsss.ops.importance_sampling import adaptive_min_pooling_loss, max_onehot

    f = _load("seam_losses")
    x = torch.from_numpy(f["helper_x"])
    assert float(adaptive_min_pooling_loss(x[:, 1:] - 0.3)) == pytest.approx(
        float(f["amp_loss"]), rel=1e-6)
    np.testing.assert_array_equal(max_onehot(x).numpy(), f["max_onehot"])


def test_seam_losses_match_train_seam() -> None:
    """`train_SEAM.py`'s loop body on the same network outputs (the SEAM base of wsss's ICAM
    method, as the preset's "SEAM baseline" line sets it): GAP classification on both views,
    adaptive min-pooling of the PCM maps, ER, ECR (top 20 %), the total and its gradient."""
    from wsss.methods.icam import seam_losses

    f = _load("seam_losses")
    cfg = load_config(PRESETS / "icam.yaml", ["method.base=seam", "method.sampling_weight=0",
                                              "method.fsl_weight=0"]).method
    net = _ViewLogits(f)
    params = [torch.nn.Parameter(t) for t in (*net.w.values(), *net.b.values())]
    net.w = dict(zip("ab", params[:2], strict=True))
    net.b = dict(zip("ab", params[2:], strict=True))
    terms = seam_losses(net, torch.from_numpy(f["img1"]), torch.from_numpy(f["labels"]), cfg)
    assert set(terms) == {"cls_pool", "rvmin", "er", "ecr"}

    def close(ours: torch.Tensor, official: np.ndarray | float) -> None:
        assert float(ours.detach()) == pytest.approx(float(official), rel=2e-6, abs=1e-7)

    close(terms["cls_pool"], (f["loss_cls1"] + f["loss_cls2"]) / 2)
    close(terms["rvmin"], (f["loss_rvmin1"] + f["loss_rvmin2"]) / 2)
    close(terms["er"], f["loss_er"])
    close(terms["ecr"], f["loss_ecr1"] + f["loss_ecr2"])
    total = sum(terms.values())
    close(total, f["loss"])
    total.backward()
    for k, p in zip(("w_a", "w_b", "b_a", "b_b"), params, strict=True):
        np.testing.assert_allclose(p.grad.numpy(), f[f"grad_{k}"], rtol=1e-4, atol=1e-6)


# IRN training loss --------------------------------------------------------------------------


class _FixedOutputs(torch.nn.Module):
    """IRN stand-in: returns the fixture's (edge, displacement) maps whatever the image."""

    def __init__(self, edge: np.ndarray, disp: np.ndarray) -> None:
        super().__init__()
        self.edge = torch.nn.Parameter(torch.from_numpy(edge))
        self.disp = torch.nn.Parameter(torch.from_numpy(disp))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.edge, self.disp


def test_irn_loss_matches_affinity_displacement_loss_and_train_irn() -> None:
    """Seeds → stride-4 labels (PIL nearest) → pair labels; `AffinityDisplacementLoss` terms
    (to_affinity, to_pair_displacement, to_displacement_loss) reduced as `train_irn.py` does:
    each of wsss's four terms is half of an official one; total and gradients equal."""
    from wsss.methods.irn import IrnConfig, irn_loss_terms

    f = _load("irn_loss")
    assert IrnConfig().train_radius == int(f["radius"]) == 10
    model = _FixedOutputs(f["edge"], f["disp"])
    seeds = torch.from_numpy(f["seeds"]).long()
    batch = {"image": torch.zeros(seeds.shape[0], 3, *seeds.shape[1:]), "mask": seeds}
    terms = irn_loss_terms(model, batch, radius=int(f["radius"]))
    for ours, official in (("affinity_pos", "pos_aff_loss"), ("affinity_neg", "neg_aff_loss"),
                           ("displacement_fg", "dp_fg_loss"), ("displacement_bg", "dp_bg_loss")):
        assert float(terms[ours].detach()) == pytest.approx(float(f[official]) / 2, rel=1e-6)
    total = sum(terms.values())
    assert float(total.detach()) == pytest.approx(float(f["total_loss"]), rel=1e-6)
    total.backward()
    np.testing.assert_allclose(model.edge.grad.numpy(), f["grad_edge"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(model.disp.grad.numpy(), f["grad_disp"], rtol=1e-5, atol=1e-9)
