"""AMN: label conditioning, ASPP, one training step, CAM inference rules, the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsss.config import load_config
from wsss.methods import build_method
from wsss.methods.amn import amn_cams
from wsss.models.amn import AMN, ASPP
from wsss.models.backbones import build_backbone

TINY = ["method.name=amn", "model.backbone=resnet18", "model.pretrained=none",
        "model.frozen_bn=false"]


def _amn(**kwargs) -> AMN:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", output_stride=16, pretrained="none", frozen_bn=False)
    return AMN(backbone=backbone, num_classes=4, **kwargs)


def test_label_conditioning_with_zero_labels_gives_the_bias_only() -> None:
    # AMN's encoder is Linear(C → D) *with* bias (official code), so an all-zero label vector
    # conditions with the bias; with the bias at zero the conditioned features vanish.
    model = _amn().eval()
    zeros = torch.zeros(2, 4)
    torch.testing.assert_close(model.condition(zeros), model.label_enc.bias.expand(2, -1))
    nn.init.zeros_(model.label_enc.bias)
    feats = {}
    model.backbone.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("f", o))
    captured = {}
    model.dropout.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    model(torch.randn(2, 3, 64, 64), zeros)
    assert feats["f"].abs().sum() > 0
    assert torch.all(captured["x"] == 0)


def test_lc_layer_and_label_inputs() -> None:
    images = torch.randn(1, 3, 64, 64)
    labels = torch.tensor([[0.0, 1, 0, 0]])
    for layer in (1, 3):
        assert _amn(lc_layer=layer).eval()(images, labels).shape == (1, 5, 4, 4)
    plain = _amn(lc_layer=None).eval()
    assert plain.label_enc is None
    torch.testing.assert_close(plain(images, labels), plain(images, torch.ones(1, 4)))
    ones = _amn(label_input="ones").eval()
    torch.testing.assert_close(ones(images, labels), ones(images, torch.zeros(1, 4)))
    noisy = _amn(label_input="noisy_label").eval()
    assert not torch.equal(noisy(images, labels), noisy(images, labels))


def test_aspp_sums_four_dilated_convolutions() -> None:
    aspp = ASPP(8, 3, [1, 2, 3, 4])
    x = torch.randn(2, 8, 9, 9)
    expected = sum(nn.functional.conv2d(x, c.weight, c.bias, padding=d, dilation=d)
                   for c, d in zip(aspp.branches, [1, 2, 3, 4]))
    torch.testing.assert_close(aspp(x), expected)


def test_one_training_step_with_unsure_seeds_is_finite() -> None:
    cfg = load_config(None, TINY)
    method = build_method(cfg)
    model = method.build_model(num_classes=4)
    groups = method.param_groups(model, 5e-6)
    assert groups[1]["lr"] == pytest.approx(1e-4)
    head_ids = {id(p) for p in groups[1]["params"]}
    assert id(model.label_enc.weight) in head_ids and id(model.head.branches[0].weight) in head_ids
    optimizer = torch.optim.Adam(groups, weight_decay=1e-4)
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[0, 10:30, 10:30] = 1
    mask[1, :, 32:] = 255
    batch = {"image": torch.randn(2, 3, 64, 64), "labels": torch.tensor([[1.0, 0, 0, 0]] * 2),
             "mask": mask, "name": ["a", "b"], "index": torch.tensor([0, 1])}
    model.train()
    terms = method.training_step(model, batch)
    assert set(terms) == {"pcl"} and torch.isfinite(terms["pcl"])
    terms["pcl"].backward()
    optimizer.step()


def test_amn_cams_background_rule_and_channels() -> None:
    model = _amn().eval()
    image = np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1], dtype=np.float32)
    seeds = np.full((40, 52), 255, dtype=np.uint8)
    seeds[:20] = 0
    with torch.inference_mode():
        plain, plain_low, keys = amn_cams(model, image, labels, scales=[1.0, 0.5],
                                          device=torch.device("cpu"))
        mixed, mixed_low, keys2 = amn_cams(model, image, labels, scales=[1.0, 0.5],
                                           seeds=seeds, device=torch.device("cpu"))
    assert keys.tolist() == [0, 2, 4] and keys2.tolist() == [0, 2, 4]
    assert plain.shape == (3, 40, 52) and plain_low.shape == (3, 10, 13)
    # Min-max normalised outside the seed background: each channel spans [0, 1].
    assert np.allclose(plain.reshape(3, -1).max(1), 1.0, atol=1e-3)
    assert np.allclose(plain.reshape(3, -1).min(1), 0.0, atol=1e-6)
    np.testing.assert_array_equal(mixed[:, 20:], plain[:, 20:])
    # Where the seed says background the raw softmax (of all C + 1 channels) is kept.
    assert not np.allclose(mixed[:, :20], plain[:, :20])
    assert np.all(mixed[:, :20].sum(0) <= 1 + 1e-5)


def test_inference_dropout_switch() -> None:
    cfg = load_config(None, TINY + ["method.inference_dropout=true", "method.dropout=0.5",
                                    "method.amn_cam_scales=[1.0]"])
    method = build_method(cfg)
    model = method.build_model(num_classes=4)
    method._set_inference_mode(model)
    assert model.dropout.training and not model.backbone.training
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    labels = np.array([1, 0, 0, 0], dtype=np.float32)
    with torch.inference_mode():
        a, _ = method.infer_cams(model, image, labels)
        b, _ = method.infer_cams(model, image, labels)
    assert not np.array_equal(a, b)
    method = build_method(load_config(None, TINY))
    method._set_inference_mode(model)
    assert not model.dropout.training


def test_stage_list() -> None:
    method = build_method(load_config(None, TINY))
    names = [s.name for s in method.stages()]
    assert names[:15] == [
        "data", "train_cam", "eval_cls", "make_cam", "eval_cam", "make_seeds", "eval_seeds",
        "train_amn", "make_amn_cam", "eval_amn_cam", "make_amn_seeds", "eval_amn_seeds",
        "train_irn", "make_pseudo_masks", "eval_pseudo_masks"]


@pytest.mark.slow
def test_pipeline_end_to_end(synthetic_root, tmp_path) -> None:
    from wsss.io import load_cams, load_mask
    from wsss.pipeline.artifacts import read_manifest
    from wsss.pipeline.runner import run_pipeline

    from ..conftest import ROOT

    overrides = [
        f"data.root={synthetic_root}", f"pipeline.workdir={tmp_path / 'runs'}",
        "pipeline.device=cpu", "data.synthetic.num_train=24", "data.synthetic.num_val=8",
        "data.synthetic.image_size=48", "train.epochs=1", "train.batch_size=8",
        "train.crop_size=48", "train.resize_long=[40,56]", "method.cam_scales=[1.0]",
        "method.amn_cam_scales=[1.0]", "method.amn_train.epochs=1",
        "method.amn_train.batch_size=8", "method.amn_train.crop_size=48",
        "method.irn.train.epochs=1", "method.irn.train.batch_size=8",
        "method.irn.train.crop_size=48", "method.irn.train_radius=5", "method.irn.num_steps=16",
        "method.irn.boundary_pad=0",
        "eval.plots=false", "eval.contour=false",
    ]
    cfg = load_config(ROOT / "configs/synthetic/amn.yaml", overrides)
    result = run_pipeline(cfg)
    assert all(o.status == "ran" for o in result.outcomes)
    run_dir = result.run_dir
    name = sorted(p.stem for p in (run_dir / "make_pseudo_masks/masks").glob("*.png"))[0]
    cams, keys = load_cams(run_dir / "make_amn_cam/cams" / f"{name}.npz")
    assert keys[0] == 0 and cams.shape[0] == keys.size
    probs, probs_keys = load_cams(run_dir / "make_pseudo_masks/probs" / f"{name}.npz")
    mask = load_mask(run_dir / "make_pseudo_masks/masks" / f"{name}.png")
    assert probs_keys[0] == 0 and probs.shape[1:] == mask.shape
    # Probabilities are stored as float16, so near-ties may flip.
    assert np.mean(probs_keys[probs.argmax(0)] != mask) < 0.01
    assert 0.0 <= read_manifest(run_dir / "eval_pseudo_masks")["summary"]["miou"] <= 1.0
    again = run_pipeline(cfg)
    assert all(o.status == "skipped" for o in again.outcomes)
