"""`wsss pretrain`: the procedural corpus, a tiny pretraining run, the shipped-weights index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import wsss.weights as weights
from wsss.cli import main
from wsss.data import pretrain_corpus as corpus_mod
from wsss.data.pretrain_corpus import PretrainCorpus, categories, render_scene
from wsss.models.backbones import build_backbone
from wsss.weights import WeightsError, install_weights, shipped_weights

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "pretrain" / "synthetic.yaml"


def test_categories_are_every_factor_combination() -> None:
    cats = categories()
    assert len(cats) >= 100
    assert len({c.name for c in cats}) == len(cats)
    factors = (corpus_mod.SHAPES, corpus_mod.TEXTURES, corpus_mod.COLOUR_FAMILIES,
               corpus_mod.PARTS)
    assert len(cats) == int(np.prod([len(f) for f in factors]))


def test_corpus_draws_no_wsss_class() -> None:
    """The corpus has its own drawing code: nothing of the WSSS generator is imported."""
    from wsss.data import synthetic

    import ast

    tree = ast.parse(Path(corpus_mod.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(name and name.startswith(("wsss.data.synthetic", "wsss.data.")) or
                   name == "wsss.data" for name in imported)
    wsss_names = set(synthetic.SYNTHETIC_CLASSES)
    assert not wsss_names & {c.shape for c in categories()}


def test_scenes_are_seeded_and_labelled() -> None:
    a = render_scene(np.random.default_rng(3), 128, 64)
    b = render_scene(np.random.default_rng(3), 128, 64)
    np.testing.assert_array_equal(a[0], b[0])
    counts = []
    for seed in range(40):
        image, labels = render_scene(np.random.default_rng(seed), 128, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert set(np.unique(labels).tolist()) <= {0.0, 1.0}
        counts.append(int(labels.sum()))
    assert min(counts) == 1 and 2 <= max(counts) <= 3  # single objects and multi-object scenes


def test_single_object_scene_shows_its_category() -> None:
    """An object changes the pixels it covers: removing the draw leaves the background only."""
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 0.5)
    corpus_mod._draw_object(image, categories()[0], rng, (32.0, 32.0), 20.0)
    changed = np.abs(image - 0.5).sum(-1) > 1e-6
    assert 0.15 < changed.mean() < 0.6  # an ellipse of radius ~20 px in a 64 px image


def test_corpus_items_differ_per_epoch_but_not_per_resume() -> None:
    from wsss.engine.trainer import SeededItems

    items = SeededItems(PretrainCorpus(num_items=4, image_size=32), seed=0)
    first = items[1]["image"]
    assert torch.equal(first, items[1]["image"])  # same (seed, epoch, index): same scene
    items.epoch = 1
    assert not torch.equal(first, items[1]["image"])  # a new epoch draws new scenes


def test_tiny_pretraining_exports_weights_that_load(tmp_path: Path, capsys) -> None:
    code = main(["pretrain", "--config", str(PRESET), "--workdir", str(tmp_path),
                 "--device", "cpu",
                 "--set", "train.epochs=1", "--set", "train.batch_size=8",
                 "--set", "method.items_per_epoch=16", "--set", "method.image_size=32",
                 "--set", "method.val_items=8", "--set", "method.num_categories=8"])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out corpus (8 scenes): exact-match accuracy" in out and "sha256" in out
    run = tmp_path / "pretrain_synthetic"
    exported = run / "export" / "resnet18_w32_synthetic.pth"
    assert (run / "data" / "samples.png").is_file()
    assert len(json.loads((run / "data" / "categories.json").read_text())) == 8
    trained = torch.load(run / "pretrain" / "model.pt", weights_only=False)["model"]
    backbone = build_backbone("resnet18_w32", output_stride=16, pretrained=str(exported),
                              frozen_bn=True)
    # The export holds the trained backbone in torchvision's names, rounded to float16.
    np.testing.assert_allclose(backbone.stem[0].weight.detach().numpy(),
                               trained["backbone.stem.0.weight"].half().float().numpy())
    np.testing.assert_allclose(backbone.layer4[1].bn2.running_var.numpy(),
                               trained["backbone.layer4.1.bn2.running_var"].half().float().numpy())
    # a rerun skips every stage
    assert main(["pretrain", "--config", str(PRESET), "--workdir", str(tmp_path),
                 "--device", "cpu",
                 "--set", "train.epochs=1", "--set", "train.batch_size=8",
                 "--set", "method.items_per_epoch=16", "--set", "method.image_size=32",
                 "--set", "method.val_items=8", "--set", "method.num_categories=8"]) == 0
    assert capsys.readouterr().out.count("skipped") == 4


@pytest.fixture()
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(weights, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(weights, "INDEX", folder / "index.json")
    return folder


def _exported(tmp_path: Path, name: str = "resnet18") -> Path:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()
             if not k.startswith("fc.")}
    path = tmp_path / f"{name}_synthetic.pth"
    torch.save({"state_dict": state, "meta": {"backbone": name}}, path)
    return path


def test_install_then_resolve_and_load(weights_dir: Path, tmp_path: Path) -> None:
    source = _exported(tmp_path)
    installed = install_weights(source, "resnet18", {"command": "wsss pretrain"})
    assert shipped_weights("resnet18") == installed
    index = json.loads((weights_dir / "index.json").read_text())
    assert index["resnet18"]["command"] == "wsss pretrain"
    backbone = build_backbone("resnet18", output_stride=16, pretrained="synthetic",
                              frozen_bn=False)
    expected = torch.load(source, weights_only=True)["state_dict"]["layer1.0.conv1.weight"]
    assert torch.equal(backbone.layer1[0].conv1.weight.detach(), expected.float())


def test_corrupt_missing_and_mismatched_weights_are_refused(weights_dir: Path,
                                                            tmp_path: Path) -> None:
    installed = install_weights(_exported(tmp_path), "resnet18", {})
    data = bytearray(installed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    installed.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"resnet18_synthetic\.pth: sha256 .* corrupt"):
        build_backbone("resnet18", output_stride=16, pretrained="synthetic", frozen_bn=False)
    installed.unlink()
    with pytest.raises(WeightsError, match="shipped weights file missing: .*resnet18_synthetic"):
        shipped_weights("resnet18")
    with pytest.raises(WeightsError, match="no shipped weights for backbone 'resnet50'"):
        build_backbone("resnet50", output_stride=16, pretrained="synthetic", frozen_bn=False)
    # weights of another backbone under this backbone's name: refused, naming the file
    install_weights(_exported(tmp_path, "resnet34"), "resnet18", {})
    with pytest.raises(WeightsError, match="resnet34_synthetic.pth holds resnet34 weights"):
        build_backbone("resnet18", output_stride=16, pretrained="synthetic", frozen_bn=False)


def test_weights_with_other_shapes_are_refused(tmp_path: Path) -> None:
    path = _exported(tmp_path)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    blob["meta"] = {}
    torch.save(blob, path)
    with pytest.raises(WeightsError, match=r"resnet18_synthetic.pth do not match the backbone"):
        build_backbone("resnet18", output_stride=16, pretrained=str(path), frozen_bn=False)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read .*resnet18_synthetic.pth"):
        build_backbone("resnet18", output_stride=16, pretrained=str(path), frozen_bn=False)


def test_pretrain_refuses_another_method_preset(capsys) -> None:
    code = main(["pretrain", "--config", str(ROOT / "configs" / "synthetic" / "smoke.yaml")])
    assert code == 2
    assert "runs a preset of the `pretrain` method" in capsys.readouterr().err


def test_pretrain_refuses_a_backbone_it_cannot_export(tmp_path: Path, capsys) -> None:
    code = main(["pretrain", "--workdir", str(tmp_path), "--device", "cpu",
                 "--set", "model.backbone=vgg16", "train.epochs=1", "method.items_per_epoch=64",
                 "method.image_size=32"])
    assert code == 2
    assert "exports torchvision ResNets" in capsys.readouterr().err
    assert not (tmp_path / "pretrain_synthetic" / "pretrain" / "manifest.json").exists()


SYNTHETIC_PRESETS = sorted((ROOT / "configs" / "synthetic").glob("*.yaml"))


@pytest.mark.parametrize("preset", SYNTHETIC_PRESETS, ids=lambda p: p.stem)
def test_every_synthetic_preset_starts_from_the_shipped_weights(preset: Path) -> None:
    from wsss.config import load_config

    cfg = load_config(preset)
    assert cfg.model.pretrained == "synthetic"
    path = shipped_weights(cfg.model.backbone)  # sha256-checked
    shipped = torch.load(path, weights_only=True)["state_dict"]
    backbone = build_backbone(cfg.model.backbone, output_stride=cfg.model.output_stride,
                              pretrained=cfg.model.pretrained, frozen_bn=cfg.model.frozen_bn)
    assert torch.equal(backbone.layer3[0].conv1.weight.detach(),
                       shipped["layer3.0.conv1.weight"].float())
    if cfg.segnet.enabled:
        assert cfg.segnet.pretrained == "synthetic"
        assert shipped_weights(cfg.segnet.backbone).is_file()


@pytest.mark.slow
def test_demo_classifier_learns_well_below_the_label_prior(tmp_path: Path) -> None:
    from wsss.pipeline.artifacts import read_manifest

    assert main(["run", "synthetic/demo", "--workdir", str(tmp_path), "--until", "eval_cls",
                 "--set", f"data.root={tmp_path / 'data'}", "pipeline.generate_data=true"]) == 0
    s = read_manifest(tmp_path / "demo" / "eval_cls")["summary"]
    assert s["train_loss"] < 0.5 * s["prior_loss"], s
    assert s["mAP"] > 0.8, s
