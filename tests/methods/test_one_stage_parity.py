"""1-Stage against outputs of the official code (`visinf/1-stage-wseg` @ d905fca).

The fixtures and how each was made: tests/fixtures/parity/make_one_stage.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.parity.make_one_stage import (
    SEEDED,
    TinyTaps,
    official_name,
    seeded_state,
)
from wsss.data.transforms import RandomResizedCrop, build_train_transform, scaled_views
from wsss.metrics.confusion import ConfusionMeter, summarize_confusion
from wsss.methods.one_stage import ASPP, OneStageNet, adin, stochastic_gate
from wsss.ops.multiscale import crop_view, finalize_probs, merge_views, pad_center
from wsss.ops.ngwp import balanced_seg_loss, focal_mask_penalty, pseudo_gt_masks
from wsss.ops.pamr import pamr

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "one_stage"


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        return {k: data[k] for k in data.files}


def _tiny_net() -> OneStageNet:
    """The fixture's network: OneStageNet on TinyTaps with the official seeded weights."""
    net = OneStageNet(backbone=TinyTaps(), num_classes=20)
    net.load_state_dict(seeded_state(net, official_name))
    return net.eval()


def test_weight_names_map_one_to_one_onto_the_official_network() -> None:
    fx = _load("padded_inference.npz")
    net = OneStageNet(backbone=TinyTaps(), num_classes=20)
    ours = [official_name(k) for k in net.state_dict() if k.rsplit(".", 1)[-1] in SEEDED]
    assert sorted(ours) == sorted(fx["seeded_keys"].tolist())


def test_padded_inference_matches_official() -> None:
    """nGWP, the focal penalty, the class scores, the FP cut and the merge on the padded grid
    (MultiscaleLoader + SoftMaxAE + infer_val + MergeMultiScale)."""
    fx = _load("padded_inference.npz")
    net = _tiny_net()
    image = fx["image"]
    pad = fx["pad_size"].tolist()
    with torch.no_grad():
        probs, scores = merge_views(net, image, scales=fx["scales"].tolist(), flip=True,
                                    pad_size=pad)
        # per view: the official scores of each padded view
        views = [pad_center(scaled_views(image, s, flip=True), pad)[0]
                 for s in fx["scales"].tolist()]
        cls = torch.cat([net(v)["cls"] for v in views])
    np.testing.assert_allclose(cls.numpy(), fx["cls_views"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), torch.sigmoid(torch.from_numpy(
        fx["cls_views"])).amax(0).numpy(), rtol=1e-5, atol=1e-6)
    present = scores > float(fx["fp_cut"])
    np.testing.assert_array_equal(present.numpy(), fx["labels_fp"] > 0)
    assert 0 < present.sum() < present.numel()  # the cut keeps some classes and drops others
    bg = float(fx["bg_power"])
    ours = finalize_probs(probs, present, bg_power=bg).numpy()
    np.testing.assert_allclose(ours, fx["merged_fp"], rtol=1e-4, atol=2e-6)
    gt = torch.from_numpy(fx["gt_labels"] > 0)
    ours_gt = finalize_probs(probs, gt, bg_power=bg).numpy()
    np.testing.assert_allclose(ours_gt, fx["merged_gt"], rtol=1e-4, atol=2e-6)
    # without the padding the network sees other grids: other scores and another merge
    with torch.no_grad():
        unpadded, unpadded_scores = merge_views(net, image, scales=fx["scales"].tolist(),
                                                flip=True)
    assert not torch.allclose(unpadded_scores, scores, atol=1e-3)
    assert not np.allclose(unpadded.numpy(), probs.numpy(), atol=1e-3)


def test_test_crf_matches_official_crf_inference() -> None:
    """`utils/dcrf.py crf_inference(img, probs, t=10)` on the merged FP-cut map (the map is
    not renormalised: background^3) = `dense_crf` with the "psa" preset."""
    pytest.importorskip("pydensecrf")
    from wsss.ops.crf import CRF_PRESETS, dense_crf

    fx = _load("padded_inference.npz")
    ours = dense_crf(fx["image"], fx["merged_fp"], **CRF_PRESETS["psa"])
    np.testing.assert_allclose(ours, fx["crf_fp"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours.argmax(0), fx["crf_fp"].argmax(0))


def test_method_predict_uses_the_configured_pad() -> None:
    """`OneStage.predict` (make_masks, infer_cams) pads with `method.test_pad_size`."""
    from wsss.config import load_config
    from wsss.methods import build_method

    fx = _load("padded_inference.npz")
    pad = fx["pad_size"].tolist()
    method = build_method(load_config(None, [
        "method.name=one_stage", f"method.test_scales={fx['scales'].tolist()}",
        f"method.test_pad_size={pad}"]))
    with torch.no_grad():
        probs, scores = method.predict(_tiny_net(), fx["image"])
    present = scores > float(fx["fp_cut"])
    ours = finalize_probs(probs, present, bg_power=3.0).numpy()
    np.testing.assert_allclose(ours, fx["merged_fp"], rtol=1e-4, atol=2e-6)


def test_pad_center_places_the_view_as_the_official_loader() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6) + 1
    padded, (top, left) = pad_center(x, (10, 9))
    assert padded.shape == (2, 3, 10, 9) and (top, left) == (2, 1)  # ⌊Δ/2⌋ before
    assert torch.equal(padded[..., 2:7, 1:7], x) and padded.sum() == x.sum()
    back = crop_view(padded, (top, left), (5, 6), (5, 6))
    assert torch.equal(back, x)
    same, offset = pad_center(x, (4, 4))  # a view larger than the grid is left as it is
    assert same.shape == x.shape and offset == (0, 0)
    assert pad_center(x, None)[0] is x


@pytest.mark.parametrize("k", [0, 1, 2])
def test_random_resized_crop_matches_official_windows_and_pixels(k: int) -> None:
    """Same `random` draws as torchvision 0.2.1's RandomResizedCrop.get_params (which the
    official code pins), and the same PIL crop-and-resize of image and mask."""
    fx = _load("random_resized_crop.npz")
    image, mask = fx[f"image{k}"], fx[f"mask{k}"]
    scale = tuple(fx["scale"].tolist())
    for seed, expected in enumerate(fx[f"windows{k}"]):
        random.seed(seed)
        window = RandomResizedCrop.window(random, *image.shape[:2], scale, (3 / 4, 4 / 3))
        assert window == tuple(expected.tolist()), seed
    crop = RandomResizedCrop(int(fx["crop_size"]), scale)
    for seed in range(len(fx[f"crops{k}"])):
        random.seed(seed)
        out_image, out_mask = crop(image, mask)
        np.testing.assert_array_equal(out_image, fx[f"crops{k}"][seed])
        np.testing.assert_array_equal(out_mask, fx[f"crop_masks{k}"][seed])


def test_one_stage_training_crop_has_no_padding() -> None:
    """The 1-Stage pipeline (RandomResizedCrop → flip → jitter → normalise) never pads: every
    mask pixel comes from the image, whatever the image's size."""
    transform = build_train_transform(crop_size=32, resize_long=None, flip=True,
                                      color_jitter=(0.3, 0.3, 0.3, 0.1),
                                      resized_crop_scale=(0.9, 1.0), rng=random.Random(0))
    rs = np.random.RandomState(0)
    for h, w in ((20, 24), (50, 40), (90, 30)):
        image = rs.randint(0, 256, (h, w, 3)).astype(np.uint8)
        mask = rs.randint(0, 5, (h, w)).astype(np.uint8)
        for _ in range(5):
            x, m = transform(image, mask)
            assert x.shape == (3, 32, 32) and m.shape == (32, 32)
            assert int(m.max()) < 5  # no 255 padding
    with pytest.raises(ValueError, match="train.resize_long"):
        build_train_transform(crop_size=32, resize_long=(30, 40), resized_crop_scale=(0.9, 1.0))


def test_components_match_official() -> None:
    """single_stage.md §7: PAMR, focal penalty, pseudo GT, balanced CE, gate, AdIN, ASPP."""
    fx = _load("components.npz")
    t = {k: torch.from_numpy(v) for k, v in fx.items() if not k.startswith("meta")}
    out = pamr(t["pamr_image"], t["pamr_mask"], dilations=(1, 2, 4, 8, 12, 24), num_iter=10)
    np.testing.assert_allclose(out.numpy(), fx["pamr_out"], rtol=1e-4, atol=1e-6)
    focal = focal_mask_penalty(t["focal_in"][..., None, None], p=3.0, lam=0.01)
    np.testing.assert_allclose(focal.numpy(), fx["focal_out"], rtol=1e-6, atol=1e-7)
    pgt = pseudo_gt_masks(t["pgt_in"], fg_cutoff=0.6, bg_cutoff=0.7, floor=0.2)
    np.testing.assert_array_equal(pgt.numpy(), fx["pgt_out"])
    loss = balanced_seg_loss(t["loss_logits"], t["pgt_out"], t["loss_labels"])
    np.testing.assert_allclose(loss.numpy(), fx["loss_out"], rtol=1e-5, atol=1e-7)
    gate = stochastic_gate(t["sg_deep"], t["sg_shallow"], psi=0.3, training=False)
    np.testing.assert_allclose(gate.numpy(), fx["sg_out"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(adin(t["adin_x"], t["adin_y"]).numpy(), fx["adin_out"],
                               rtol=1e-6, atol=1e-6)
    aspp = ASPP(64, out_channels=256, dilations=(12, 24, 36))
    aspp.load_state_dict(seeded_state(aspp, lambda key: official_name("aspp." + key)))
    with torch.no_grad():
        ours = aspp.eval()(t["aspp_in"])[:, :32]
    np.testing.assert_allclose(ours.numpy(), fx["aspp_out"], rtol=1e-4, atol=1e-5)


def test_evaluation_counts_absent_classes_as_zero_like_eval_seg() -> None:
    """eval_seg.py: confusion matrix of evaluate_one and summarise_stats' IoU (absent = 0)."""
    fx = _load("eval_seg.npz")
    meter = ConfusionMeter(21)
    for gt, pred in zip(fx["gts"], fx["preds"], strict=True):
        meter.update(pred, gt)
    conf = meter.matrix.numpy()
    np.testing.assert_array_equal(conf[:, :21], fx["conf"])
    assert conf[:, 21].sum() == 0
    zero = summarize_confusion(meter.matrix, absent="zero")
    np.testing.assert_allclose(np.array(list(zero["iou"].values())) * 100, fx["iou"],
                               atol=1e-9)
    assert abs(zero["miou"] * 100 - float(fx["miou_all"])) < 0.006  # printed with 2 decimals
    excluded = summarize_confusion(meter.matrix, absent="nan")
    assert excluded["miou"] > zero["miou"] + 0.1  # 8 of 21 classes are absent here


def test_voc_presets_use_the_official_evaluation_and_recipe() -> None:
    """Items 9-11: eval.absent zero, ResNet biases at lr x1, 25 epochs with selection."""
    from wsss.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs" / "voc"
    r38 = load_config(root / "one_stage.yaml", [])
    assert r38.eval.absent == "zero" and r38.method.bias_lr_mult == 2.0
    assert r38.train.epochs == 25 and r38.train.select_epochs == list(range(6, 25, 2))
    assert r38.method.test_pad_size == [1024, 1024]
    assert r38.train.resized_crop_scale == [0.9, 1.0] and r38.train.resize_long is None
    for name in ("one_stage_resnet50.yaml", "one_stage_resnet101.yaml"):
        cfg = load_config(root / name, [])
        assert cfg.method.bias_lr_mult == 1.0 and cfg.eval.absent == "zero"
        assert cfg.method.test_pad_size == [768, 768]
        assert cfg.train.epochs == 21 and cfg.train.select_epochs == list(range(6, 21, 2))
    vgg = load_config(root / "one_stage_vgg16.yaml", [])
    assert vgg.method.bias_lr_mult == 2.0 and vgg.method.test_pad_size == [768, 768]


def test_inference_helpers_live_in_ops_without_importing_methods() -> None:
    """`wsss.predict` takes the 1-Stage test helpers from `wsss.ops.multiscale`, not from the
    method module (the former methods/base -> segnet -> predict -> one_stage -> base cycle),
    and the ops module imports no method."""
    import subprocess
    import sys

    import wsss.predict

    assert "wsss.methods.one_stage" not in Path(wsss.predict.__file__).read_text()
    code = ("import sys, wsss.ops.multiscale; "
            "print(any(m.startswith('wsss.methods') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
