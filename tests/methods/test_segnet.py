"""Final segmentation stage: one training step, predict on odd image files, the API round trip,
checkpoint kinds, `wsss predict`, and a tiny end-to-end pipeline with `segnet.enabled`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wsss
from wsss.cli import main
from wsss.config import SegnetConfig, load_config
from wsss.engine.checkpoint import CheckpointError, save_checkpoint
from wsss.io import load_mask
from wsss.methods import METHODS, build_method
from wsss.methods.segnet import (
    balanced_cross_entropy,
    build_segnet_from_config,
    segmentation_loss,
    segnet_checkpoint_meta,
    segnet_param_groups,
    segnet_training_step,
)
from wsss.predict import CHECKPOINT_KINDS, Predictor, ScoreModel, msc_max_probs, multiscale_probs

from ..conftest import SMOKE
from ..models.test_segnet import register_tiny

CLASSES = ["background", "a", "b", "c"]


def _config(**segnet) -> SegnetConfig:
    return SegnetConfig(arch="deeplabv2", backbone=register_tiny(), pretrained="none",
                        frozen_bn=False, **segnet)


def test_one_training_step_is_finite() -> None:
    torch.manual_seed(0)
    model = build_segnet_from_config(_config(), num_classes=3)
    backbone, head = model.param_groups()
    optimizer = torch.optim.SGD([{"params": backbone, "lr": 0.01},
                                 {"params": head, "lr": 0.1}], momentum=0.9)
    masks = torch.randint(0, 4, (2, 40, 40))
    masks[:, :8] = 255  # crop padding
    batch = {"image": torch.randn(2, 3, 40, 40), "mask": masks}
    for balanced in (False, True):
        terms = segnet_training_step(model.train(), batch, balanced=balanced)
        assert set(terms) == {"seg"} and torch.isfinite(terms["seg"])
        optimizer.zero_grad()
        terms["seg"].backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_msc_loss_terms_and_parameter_groups() -> None:
    """Item 23: four finite MSC terms that train; head biases in their own group."""
    torch.manual_seed(0)
    cfg = _config(msc_train_scales=[0.5, 0.75], head_bias_weight_decay=None)
    model = build_segnet_from_config(cfg, num_classes=3).train()
    groups = segnet_param_groups(model, cfg)
    assert [g["lr"] / cfg.lr for g in groups] == pytest.approx([1.0, 10.0, 20.0])
    assert all("weight_decay" not in g for g in groups)  # null: the common weight decay
    biases = {id(b) for b in model.head.branches.parameters() if b.ndim == 1}
    assert {id(p) for p in groups[2]["params"]} == biases
    masks = torch.randint(0, 4, (2, 40, 40))
    masks[:, :8] = 255
    terms = segnet_training_step(model, {"image": torch.randn(2, 3, 40, 40), "mask": masks},
                                 msc_scales=cfg.msc_train_scales)
    assert len(terms) == 4 and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert model.head.branches[0].bias.grad is not None
    with pytest.raises(ValueError, match="segnet.test_merge"):
        build_segnet_from_config(_config(test_merge="median"), num_classes=3)


def test_losses_on_hand_made_masks() -> None:
    logits = torch.randn(1, 3, 2, 4, requires_grad=True)
    masks = torch.tensor([[[0, 0, 0, 1], [2, 255, 255, 255]]])
    per_pixel = torch.nn.functional.cross_entropy(logits, masks, ignore_index=255,
                                                  reduction="none")
    plain = segmentation_loss(logits, masks)
    assert torch.isclose(plain, per_pixel.sum() / 5)
    expected = (per_pixel[0, 0, :3].mean() + per_pixel[0, [0, 1], [3, 0]].mean()) / 2
    assert torch.isclose(balanced_cross_entropy(logits, masks), expected)
    ignored = torch.full_like(masks, 255)
    for balanced in (False, True):  # a crop of pure padding: 0, not NaN, and differentiable
        loss = segmentation_loss(logits, ignored, balanced=balanced)
        assert loss.item() == 0.0
        loss.backward()


# --------------------------------------------------------------------------------------------
# Checkpoint, API and CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `train_segnet`-style model.pt of an untrained tiny network (random but fixed)."""
    torch.manual_seed(1)
    cfg = load_config(None, [f"segnet.backbone={register_tiny()}", "segnet.frozen_bn=false",
                             "segnet.test_scales=[1.0,0.5]", "segnet.test_flip=true",
                             "segnet.crf=false"])
    model = build_segnet_from_config(cfg.segnet, num_classes=3)
    for module in model.modules():  # non-trivial BN statistics, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    meta = segnet_checkpoint_meta(cfg, "cam_baseline", "make_seeds", CLASSES)
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_max_merge_predicts_the_msc_max(checkpoint: Path) -> None:
    """Item 22: `merge="max"` scores like deeplab-pytorch's MSC test, not like the mean."""
    image = _image(45, 61)
    mean = Predictor.from_checkpoint(checkpoint).predict_probs(image)
    predictor = Predictor.from_checkpoint(checkpoint, merge="max")
    probs = predictor.predict_probs(image)
    with torch.inference_mode():
        expected = msc_max_probs(predictor.model, image, scales=[1.0, 0.5], flip=True)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.abs(probs - mean).max() > 1e-3
    with pytest.raises(ValueError, match="1.0"):
        Predictor.from_checkpoint(checkpoint, merge="max", scales=[0.5]).predict(image)


def test_api_round_trip_equals_in_process_prediction(checkpoint: Path) -> None:
    from wsss.engine.checkpoint import load_checkpoint
    from wsss.models.segnet import build_segnet

    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    model = build_segnet(arch="deeplabv2", backbone=register_tiny(), num_classes=3)
    model.load_state_dict(state["model"])
    model.eval()
    image = _image(45, 61)
    with torch.inference_mode():
        probs = multiscale_probs(model, image, scales=[1.0, 0.5], flip=True)
    expected = probs.argmax(0).numpy().astype(np.uint8)

    predictor = wsss.load(checkpoint)
    assert predictor.class_names == CLASSES and meta["kind"] == "segnet"
    assert predictor.scales == [1.0, 0.5] and predictor.flip and not predictor.crf
    for source in (image, Image.fromarray(image)):
        mask = predictor.predict(source)
        assert mask.dtype == np.uint8 and mask.shape == (45, 61)
        np.testing.assert_array_equal(mask, expected)
    assert not predictor.model.training


def _odd_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Image files of awkward formats and the (H, W) their masks must have."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _image(30, 50, seed=2)
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((30, 50), 128, np.uint8)]), "RGBA").save(
        folder / "rgba.png")
    Image.fromarray(rgb).quantize(16).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 50 wide x 30 high, displayed rotated by 90°: 30 wide x 50 high
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(rgb).save(folder / "rotated_png.png", exif=exif.tobytes())
    Image.fromarray(_image(23, 611, seed=3)).save(folder / "wide.jpg")  # above max_side
    Image.fromarray(_image(3, 5, seed=4)).save(folder / "tiny.bmp")
    (folder / "notes.txt").write_text("not an image")
    return {"gray": (30, 50), "rgba": (30, 50), "palette": (30, 50), "rotated": (50, 30),
            "rotated_png": (50, 30), "wide": (23, 611), "tiny": (3, 5)}


def test_predict_odd_formats_and_sizes(checkpoint: Path, tmp_path: Path) -> None:
    expected = _odd_files(tmp_path / "in")
    predictor = wsss.load(checkpoint, max_side=256)
    for name, size in expected.items():
        path = next((tmp_path / "in").glob(f"{name}.*"))
        mask = predictor.predict(path)
        assert mask.shape == size, name
        assert mask.max() <= 3
    # the EXIF-rotated file gives the mask of the upright image
    upright = np.asarray(Image.open(tmp_path / "in" / "rotated.jpg").transpose(Image.ROTATE_270))
    np.testing.assert_array_equal(predictor.predict(tmp_path / "in" / "rotated.jpg"),
                                  predictor.predict(upright))
    gray = np.asarray(Image.open(tmp_path / "in" / "gray.png"))
    assert gray.ndim == 2
    np.testing.assert_array_equal(predictor.predict(gray),
                                  predictor.predict(tmp_path / "in" / "gray.png"))


def test_cli_predict_writes_masks_and_overlays(checkpoint: Path, tmp_path: Path,
                                               capsys) -> None:
    expected = _odd_files(tmp_path / "in")
    single = tmp_path / "extra.png"
    Image.fromarray(_image(20, 20)).save(single)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"),
                 str(single), "--out", str(out), "--crf", "--scales", "1.0",
                 "--device", "cpu"]) == 0
    assert "wrote 8 masks" in capsys.readouterr().out
    for name, size in {**expected, "extra": (20, 20)}.items():
        with Image.open(out / "masks" / f"{name}.png") as mask:
            assert mask.mode == "P" and mask.size == size[::-1]
        with Image.open(out / "overlays" / f"{name}.png") as over:
            assert over.mode == "RGB" and over.size == size[::-1]
    assert load_mask(out / "masks" / "tiny.png").max() <= 3


def test_cli_predict_reports_bad_files(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(_image(10, 12)).save(tmp_path / "in" / "good.png")
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 1  # some skipped
    assert "broken.jpg" in capsys.readouterr().err
    assert (tmp_path / "out" / "masks" / "good.png").is_file()
    assert main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), "--input",
                 str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2


class _Constant(torch.nn.Module):
    """Constant scores `bias` at every pixel (a stand-in for a method's own network)."""

    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(num_outputs))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return self.bias.view(1, -1, 1, 1).expand(b, -1, h, w)


def test_checkpoint_kinds_are_the_extension_point(tmp_path: Path) -> None:
    """A method registers how to rebuild its network (as `one_stage` does); load() uses it."""
    if "toy_test" not in CHECKPOINT_KINDS:
        CHECKPOINT_KINDS.register("toy_test")(
            lambda meta: ScoreModel(model=_Constant(meta["num_classes"] + 1),
                                    scores=lambda m, x: m(x), merge="probs"))
    path = tmp_path / "toy.pt"
    bias = torch.tensor([0.0, 0.0, 5.0, 0.0])
    save_checkpoint(path, {"model": {"bias": bias},
                           "meta": {"method": "toy_test", "class_names": CLASSES,
                                    "num_classes": 3}})
    mask = wsss.load(path).predict(_image(7, 9))
    assert mask.shape == (7, 9) and (mask == 2).all()

    save_checkpoint(path, {"model": {}, "meta": {"method": "cam_baseline",
                                                 "class_names": CLASSES, "num_classes": 3}})
    with pytest.raises(CheckpointError, match="predictable kinds: .*segnet"):
        wsss.load(path)


def test_one_stage_checkpoint_predicts(tmp_path: Path) -> None:
    """1-Stage's own network (its `train` stage's model.pt) is a valid checkpoint for predict."""
    from types import SimpleNamespace

    from wsss.ops.multiscale import finalize_probs, merge_views

    torch.manual_seed(0)
    cfg = load_config(None, ["method.name=one_stage", f"model.backbone={register_tiny()}",
                             "model.pretrained=none", "model.frozen_bn=false",
                             "method.test_scales=[1.0,0.5]", "method.crf=false"])
    method = build_method(cfg)
    model = method.build_model(3).eval()
    meta = method.checkpoint_meta(SimpleNamespace(class_names=CLASSES, num_classes=3))
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})

    image = _image(37, 29)
    with torch.inference_mode():
        merged, scores = merge_views(model, image, scales=[1.0, 0.5], flip=True,
                                     device=torch.device("cpu"))
        expected = finalize_probs(merged, scores > cfg.method.fp_cut, bg_power=3.0).argmax(0)
    predictor = wsss.load(path)
    assert predictor.scales == [1.0, 0.5] and predictor.flip and not predictor.crf
    np.testing.assert_array_equal(predictor.predict(image), expected.numpy().astype(np.uint8))


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_ends_with_the_segnet_stages(name: str) -> None:
    off = build_method(load_config(None, [f"method.name={name}"]))
    assert "train_segnet" not in [s.name for s in off.stages()]
    method = build_method(load_config(None, [f"method.name={name}", "segnet.enabled=true"]))
    if not method.pseudo_mask_stage:  # a method must name its pseudo-masks for the segnet
        with pytest.raises(ValueError, match="pseudo_mask_stage"):
            method.stages()
        return
    chosen = build_method(load_config(None, [f"method.name={name}", "segnet.enabled=true",
                                             "segnet.pseudo_mask_stage=data/anything"]))
    assert chosen.stages()[-3].needs == ("data",)
    names = [s.name for s in method.stages()]
    assert names[-3:] == ["train_segnet", "predict_val", "eval_val"]
    assert method.pseudo_mask_stage.partition("/")[0] in names[:-3]
    assert len(names) == len(set(names))


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def test_pipeline_end_to_end_with_segnet(smoke_overrides: list[str]) -> None:
    from wsss.pipeline.runner import run_pipeline

    cfg = load_config(SMOKE, smoke_overrides + [
        f"model.backbone={register_tiny()}", "method.cam_scales=[1.0]", "method.cam_flip=false",
        "method.seed_crf=false", "eval.contour=false",
        "segnet.enabled=true", f"segnet.backbone={register_tiny()}",
        "segnet.pretrained=none", "segnet.frozen_bn=false", "segnet.iterations=3",
        "segnet.batch_size=4", "segnet.crop_size=40", "segnet.lr=0.01",
        "segnet.test_scales=[1.0,0.75]", "segnet.test_flip=true",
    ])
    result = run_pipeline(cfg)
    assert [o.name for o in result.outcomes][-3:] == ["train_segnet", "predict_val", "eval_val"]
    assert result.summary("train_segnet")["steps"] == 3
    summary = result.summary("eval_val")
    assert 0.0 <= summary["miou"] <= 1.0 and 0.0 <= summary["miou_crf"] <= 1.0
    run = result.run_dir
    table = (run / "eval_val" / "per_class.md").read_text()
    assert "| background |" in table and "**mean**" in table and "IoU + CRF" in table

    # the checkpoint alone reproduces the pipeline's predictions (API round trip)
    predictor = wsss.load(run / "train_segnet" / "model.pt", max_side=None)
    val = sorted((run / "predict_val" / "masks").glob("*.png"))
    assert len(val) == 8
    image = Path(cfg.data.root) / "JPEGImages"
    first = next(image.glob(val[0].stem + ".*"))
    np.testing.assert_array_equal(predictor.predict(first, crf=False), load_mask(val[0]))
    np.testing.assert_array_equal(predictor.predict(first, crf=True),
                                  load_mask(run / "predict_val" / "masks_crf" / val[0].name))

    again = run_pipeline(cfg)  # unchanged config: everything skipped
    assert {o.status for o in again.outcomes} == {"skipped"}
