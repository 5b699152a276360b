"""AuxSegNet: network outputs and affinities, parameter groups, component switches, label
update, stage layout, round initialisation and (slow) a killed multi-round run that resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.config import ConfigError, load_config
from wsss.methods import build_method
from wsss.methods import auxsegnet as aux_module
from wsss.methods.auxsegnet import AuxSegNet, AuxSegNetConfig
from wsss.ops.cross_task_affinity import propagate
from wsss.pipeline.artifacts import read_manifest

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "synthetic" / "auxsegnet.yaml"
TINY = ["model.backbone=resnet18", "model.pretrained=none", "model.frozen_bn=false",
        "model.output_stride=16", "method.name=auxsegnet", "method.head_channels=16",
        "method.head_dilations=[1,2,3]"]


def _method(*extra: str) -> AuxSegNet:
    return build_method(load_config(None, TINY + list(extra)))


def _batch(num_classes: int = 4, size: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, num_classes + 1, (2, size, size), generator=g)
    masks[:, :8] = 255
    return {"image": torch.randn(2, 3, size, size, generator=g),
            "labels": torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]]), "mask": masks,
            "saliency": torch.rand(2, size, size, generator=g), "name": ["a", "b"],
            "index": torch.tensor([0, 1])}


def test_network_outputs_and_affinity() -> None:
    torch.manual_seed(0)
    model = _method().build_model(num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    h, w = 4, 6  # output stride 16
    assert out["cls"].shape == (2, 4) and out["cams"].shape == (2, 4, h, w)
    assert out["seg_init"].shape == out["seg_refined"].shape == (2, 5, h, w)
    assert out["sal_init"].shape == out["sal_refined"].shape == (2, 1, h, w)
    affinity = out["affinity"]
    assert affinity.shape == (2, h * w, h * w) and (affinity >= 0).all()
    # Refined logits are the cross-task affinity applied to the initial ones (A · Y).
    torch.testing.assert_close(out["seg_refined"], propagate(affinity, out["seg_init"]))
    torch.testing.assert_close(out["sal_refined"], propagate(affinity, out["sal_init"]))
    # Each task affinity is a row-softmax.
    feats = model.backbone(torch.randn(1, 3, 64, 96))[-1]
    seg_feats = torch.relu(model.seg_conv2(torch.relu(model.seg_conv1(feats))))
    torch.testing.assert_close(model.seg_att(seg_feats).sum(-1), torch.ones(1, h * w))


def test_normalized_cross_affinity_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    model = _method("method.normalize_cross_affinity=true").build_model(num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(out["affinity"].sum(-1), torch.ones(1, 16))


def test_param_groups_follow_the_official_name_rule() -> None:
    method = _method()
    model = method.build_model(num_classes=4)
    slow, fast = method.param_groups(model, 0.1)
    assert slow["lr"] == 0.1 and fast["lr"] == pytest.approx(0.1 * 10)
    fast_ids, slow_ids = {id(p) for p in fast["params"]}, {id(p) for p in slow["params"]}
    names = dict(model.named_parameters())
    assert id(names["fc8.weight"]) in fast_ids and id(names["seg_att.theta.weight"]) in fast_ids
    assert id(names["sal_W.bias"]) in fast_ids
    assert id(names["cross_att.0.weight"]) in slow_ids  # the cross-task convs train at 1×
    assert all(id(p) in slow_ids for n, p in names.items() if n.startswith("backbone."))
    assert len(fast_ids | slow_ids) == len(fast_ids) + len(slow_ids) == len(names)


@pytest.mark.parametrize(("multi_task", "affinity"), [
    (True, "cross"), (True, "task"), (True, "none"), (False, "task"), (False, "none")])
def test_component_switches_train_and_infer(multi_task: bool, affinity: str) -> None:
    torch.manual_seed(0)
    method = _method(f"method.multi_task={str(multi_task).lower()}",
                     f"method.affinity={affinity}")
    model = method.build_model(num_classes=4)
    optimizer = torch.optim.SGD(method.param_groups(model, 0.01), lr=0.01)
    model.train()
    batch = _batch()
    if not multi_task:
        del batch["saliency"]
    terms = method.training_step(model, batch)
    expected = {"seg_init"}
    if affinity != "none":
        expected.add("seg_refined")
    if multi_task:
        expected |= {"cls", "sal_init"} | ({"sal_refined"} if affinity != "none" else set())
    assert set(terms) == expected
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    optimizer.step()
    model.eval()
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    with torch.inference_mode():
        cams, keys = method.infer_cams(model, image, np.array([1, 0, 0, 1], dtype=np.float32))
        probs = method.predict(model, image)
    assert cams.shape == (2, 40, 56) and keys.tolist() == [1, 4]
    assert cams.min() >= 0 and cams.max() <= 1
    assert probs.shape == (5, 40, 56)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_training_step_needs_saliency() -> None:
    method = _method()
    model = method.build_model(num_classes=4)
    batch = _batch()
    del batch["saliency"]
    with pytest.raises(KeyError, match="saliency"):
        method.training_step(model, batch)


@pytest.mark.parametrize(("override", "key"), [
    ("method.affinity=both", "method.affinity"),
    ("method.num_rounds=0", "method.num_rounds"),
    ("method.round0_init=imagenet", "method.round0_init"),
    ("method.round_init=last", "method.round_init"),
    ("method.pad_label=7", "method.pad_label"),
    ("method.head_dilations=[1,2]", "method.head_dilations"),
    ("method.scale_per=epoch", "method.scale_per"),
    ("method.resize=bicubic", "method.resize"),
])
def test_bad_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _method(override)


def test_voc_preset_follows_the_official_code_and_has_the_deeplab_settings() -> None:
    """Items 18-20: labels padded with background, one cv2 rescale per batch, and the
    segnet section of the other VOC presets (DeepLab-v2, deeplab-pytorch recipe)."""
    from dataclasses import asdict

    voc = ROOT / "configs" / "voc"
    cfg = load_config(voc / "auxsegnet.yaml")
    assert (cfg.method.pad_label, cfg.method.scale_per, cfg.method.resize) == (0, "batch", "cv2")
    assert AuxSegNetConfig().pad_label == 0 and AuxSegNetConfig().scale_per == "batch"
    ours, theirs = asdict(cfg.segnet), asdict(load_config(voc / "cam_baseline.yaml").segnet)
    for key in ("pseudo_mask_stage", "enabled"):
        ours.pop(key), theirs.pop(key)
    assert ours == theirs
    assert cfg.segnet.backbone == "resnet101_caffe" and cfg.segnet.pretrained != "none"
    assert cfg.segnet.test_scales == [1.0, 0.5, 0.75] and cfg.segnet.test_merge == "max"
    coco = load_config(ROOT / "configs" / "coco" / "auxsegnet.yaml").segnet
    assert (coco.crop_size, coco.batch_size) == (481, 20)


def test_cross_affinity_needs_multi_task() -> None:
    with pytest.raises(ConfigError, match="multi_task"):
        _method("method.multi_task=false")


def test_update_labels_rules() -> None:
    torch.manual_seed(0)
    method = _method("method.saliency_crf=false")
    model = method.build_model(num_classes=4).eval()
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 0], dtype=np.float32)
    saliency = np.zeros((40, 56), dtype=np.float32)
    with torch.inference_mode():
        mask, new_sal = method.update_labels(model, image, saliency, labels)
        out = model(aux_module.normalize_image(image)[None])
    assert mask.dtype == np.uint8 and mask.shape == (40, 56)
    assert set(np.unique(mask).tolist()) <= {0, 2, 255}  # only the labelled class (id 2)
    # Without the CRF the new saliency is (sigmoid(refined saliency) + original) / 2.
    predicted = torch.sigmoid(aux_module._upsample(out["sal_refined"], (40, 56)))[0, 0]
    np.testing.assert_allclose(new_sal, predicted.numpy() / 2, atol=1e-5)
    # The mask is exactly the fusion rule on the refined CAMs and the new saliency.
    cams = aux_module.refined_cams(out, (40, 56))
    expected = aux_module.fuse_cam_saliency(cams, torch.from_numpy(new_sal)[None],
                                            torch.from_numpy(labels)[None])[0]
    np.testing.assert_array_equal(mask, expected.numpy())


def test_stage_layout_and_final_masks() -> None:
    method = _method()
    names = [s.name for s in method.stages()]
    assert names[:6] == ["data", "train_cam", "make_cam", "eval_cam", "labels_round0",
                         "eval_labels_round0"]
    assert [n for n in names if n.startswith("train_round")] == [f"train_round{s}"
                                                                 for s in range(4)]
    assert [n for n in names if n.startswith("labels_round")] == [f"labels_round{s}"
                                                                  for s in range(5)]
    assert [n for n in names if n.startswith("eval_round")] == [f"eval_round{s}"
                                                                for s in range(4)]
    assert names.index("train_round2") < names.index("labels_round3") < names.index(
        "train_round3")
    assert method.pseudo_mask_stage == "labels_round4"
    stages = {s.name: s for s in method.stages()}
    assert stages["train_round1"].needs == ("labels_round1", "train_round0")
    assert stages["train_round0"].needs == ("labels_round0", "train_cam")
    short = _method("method.num_rounds=2", "method.predict_every_round=false",
                    "method.round0_init=pretrained", "method.round_init=initial")
    stages = {s.name: s for s in short.stages()}
    assert short.pseudo_mask_stage == "labels_round2"
    assert "predict_round0" not in stages and "predict_round1" in stages
    assert "train_round2" not in stages
    assert stages["train_round0"].needs == ("labels_round0",)  # model.pretrained
    assert stages["train_round1"].needs == ("labels_round1",)
    segnet = _method("segnet.enabled=true")
    assert [s.name for s in segnet.stages()][-3:] == ["train_segnet", "predict_val", "eval_val"]


def test_round0_init_from_cam_network(tmp_path: Path) -> None:
    from wsss.engine.checkpoint import save_checkpoint

    method = _method("method.round0_init=cam")
    cam_model = aux_module._InitialCams(method.cfg).build_model(num_classes=4)
    save_checkpoint(tmp_path / "model.pt", {"model": cam_model.state_dict()})
    model = method.build_model(num_classes=4)
    method._load_init(model, tmp_path / "model.pt", from_cam=True)
    torch.testing.assert_close(model.fc8.weight, cam_model.classifier.weight)
    torch.testing.assert_close(model.backbone.layer1[0].conv1.weight,
                               cam_model.backbone.layer1[0].conv1.weight)


def _pipeline_overrides(root: Path, workdir: Path) -> list[str]:
    return [f"data.root={root}", f"pipeline.workdir={workdir}", "pipeline.device=cpu",
            "pipeline.report=false", "pipeline.tensorboard=false", "eval.plots=false",
            "data.synthetic.num_train=24", "data.synthetic.num_val=8",
            "data.synthetic.image_size=48",
            "train.epochs=1", "train.batch_size=8", "train.crop_size=48",
            "train.resize_long=[40,56]", "method.cam_scales=[1.0]", "method.num_rounds=2",
            "method.round_train.epochs=1", "method.round_train.batch_size=8",
            "method.round_train.crop_size=48", "method.head_channels=16"]


@pytest.mark.slow
def test_killed_label_update_resumes_at_the_right_round(synthetic_root: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    from wsss.pipeline.runner import run_pipeline

    class Killed(Exception):
        pass

    cfg = load_config(PRESET, _pipeline_overrides(synthetic_root, tmp_path / "runs"))
    real = aux_module.save_mask
    calls: list[str] = []

    def dying(path, mask):
        if "labels_round2" in str(path) and len(calls) == 3:
            raise Killed
        real(path, mask)
        if "labels_round2" in str(path):
            calls.append(str(path))

    monkeypatch.setattr(aux_module, "save_mask", dying)
    with pytest.raises(Killed):
        run_pipeline(cfg)
    monkeypatch.setattr(aux_module, "save_mask", real)
    run_dir = tmp_path / "runs" / cfg.pipeline.name
    assert read_manifest(run_dir / "train_round1") is not None
    assert read_manifest(run_dir / "labels_round2") is None

    result = run_pipeline(cfg)
    status = {o.name: o.status for o in result.outcomes}
    assert all(status[s] == "skipped" for s in ("train_cam", "train_round0", "labels_round1",
                                                 "train_round1"))
    assert status["labels_round2"] == "resumed"
    summary = read_manifest(run_dir / "labels_round2")["summary"]
    assert summary["computed"] == summary["images"] - 3
    for s in range(3):
        metrics = read_manifest(run_dir / f"eval_labels_round{s}")["summary"]
        assert 0.0 <= metrics["miou"] <= 1.0
    assert 0.0 <= read_manifest(run_dir / "eval_round1")["summary"]["miou"] <= 1.0
    # Later rounds read the updated saliency written by the label update.
    saliency = sorted((run_dir / "labels_round1" / "saliency").glob("*.png"))
    assert len(saliency) == 24
