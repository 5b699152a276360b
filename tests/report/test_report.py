"""Report, comparison and TensorBoard logging on a tiny real run; the report opened in Chromium."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsss.cli import main
from wsss.config import dump_config, load_config
from wsss.engine.trainer import Trainer
from wsss.evaluation import write_result
from wsss.pipeline.artifacts import write_manifest
from wsss.pipeline.runner import run_pipeline
from wsss.report import compare_runs, write_report
from wsss.report.collect import read_run
from wsss.report.gallery import build_galleries, image_miou
from wsss.report.tensorboard import TensorBoardLogger

from ..conftest import SMOKE
from .browser import Browser, find_chromium

# Everything on the 8 val images, one CAM scale: the whole pipeline in a few seconds.
TINY = ["data.train_split=val", "data.infer_split=val", "data.eval_split=val",
        "method.cam_scales=[1.0]", "method.cam_flip=false", "pipeline.tensorboard_every=1",
        "pipeline.tensorboard_image_every=1", "pipeline.tensorboard_images=3"]


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0,
                                                       "histograms": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tiny_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, list[str]]:
    workdir = tmp_path_factory.mktemp("report") / "runs"
    overrides = [f"data.root={synthetic_root}", f"pipeline.workdir={workdir}",
                 "pipeline.device=cpu"] + TINY
    result = run_pipeline(load_config(SMOKE, overrides))
    write_report(result.run_dir)
    return result.run_dir, overrides


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_report_files_are_local_and_complete(tiny_run) -> None:
    run_dir, _ = tiny_run
    index = run_dir / "report" / "index.html"
    text = index.read_text()
    parser = _Collect()
    parser.feed(text)
    sources = [a["src"] for tag, a in parser.tags if tag == "img"]
    assert sources and all(not re.match(r"[a-z]+:", s) for s in sources)  # relative, no network
    assert all((index.parent / s).is_file() for s in sources)
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    for needed in ("Config", "Results", "Per-class IoU", "Thresholds", "Gallery",
                   "oracle", "fixed", "split", "miou_vs_threshold.png",
                   "best_threshold_hist_eval_cam.png", "ignore / unsure (255)"):
        assert needed in text, needed
    # one gallery row per val image: image, CAM, seeds, ground truth
    gallery = [s for s in sources if s.startswith("gallery/val/")]
    assert len(gallery) == 8 * 4


def test_gallery_is_worst_first(tiny_run, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    info = read_run(run_dir)
    galleries, notes = build_galleries(info, tmp_path, max_images=5)
    assert [g.split for g in galleries] == ["val"] and not notes
    g = galleries[0]
    assert g.order_stage == "make_seeds" and g.num_images == 8 and len(g.rows) == 5
    scores = [r.miou for r in g.rows]
    finite = [s for s in scores if s is not None]
    assert finite == sorted(finite) and scores[: len(finite)] == finite
    assert [c.kind for c in g.columns] == ["image", "cams", "masks", "gt"]


def test_image_miou_known_answer() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 0, 1, 0], [255, 0, 1, 1]])
    # background: 3 hits, 1 FP (gt 1 → 0) → 3/4; class 1: 2 hits, 1 FN → 2/3; 255s ignored
    assert image_miou(pred, gt, 3) == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert image_miou(np.zeros((2, 2), int), np.full((2, 2), 255), 3) is None


@pytest.mark.skipif(None in find_chromium(),
                    reason="headless browser test needs the Debian packages chromium and "
                           "chromium-driver (apt-get install chromium chromium-driver)")
def test_report_in_headless_chromium(tiny_run, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    with Browser(tmp_path / "profile") as browser:
        browser.open(run_dir / "report" / "index.html")
        state = browser.run("""
            const imgs = Array.from(document.images);
            return {
              title: document.title,
              tables: Array.from(document.querySelectorAll('table')).map(t => t.className),
              results: Array.from(document.querySelectorAll('table.results tbody tr'))
                .map(r => r.innerText),
              images: imgs.length,
              broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
              legend: document.querySelectorAll('.legend .item').length,
            };""")
        shot = browser.screenshot(tmp_path / "report.png")
    assert state["title"].startswith("wsss report")
    assert {"config", "results", "classes", "gallery"} <= set(state["tables"])
    assert any("oracle" in r for r in state["results"])
    assert any("fixed" in r for r in state["results"])
    assert state["images"] == 2 + 8 * 4 and state["broken"] == []
    assert state["legend"] >= 3  # background, ignore and at least one class
    from PIL import Image

    with Image.open(shot) as image:
        assert image.width >= 1000 and image.height > 900
        assert len(set(image.convert("L").getdata())) > 20  # not a blank page


def test_tensorboard_events_of_a_run(tiny_run) -> None:
    run_dir, _ = tiny_run
    train = _events(run_dir / "tensorboard" / "train_cam")
    tags = train.Tags()
    assert {"loss/total", "lr/group0", "lr/group1", "epoch/total", "epoch/lr"} <= set(
        tags["scalars"])
    assert "train/input" in tags["images"]
    cam = _events(run_dir / "tensorboard" / "eval_cam")
    metrics = json.loads((run_dir / "eval_cam" / "metrics.json").read_text())
    assert cam.Scalars("metrics/miou_fixed")[0].value == pytest.approx(metrics["fixed"]["miou"])
    assert len(cam.Scalars("sweep/miou")) == len(metrics["sweep"]["thresholds"])
    assert "sweep/per_image_best_threshold" in cam.Tags()["histograms"]
    assert len([t for t in cam.Tags()["images"] if t.startswith("cam/")]) == 3
    seeds = _events(run_dir / "tensorboard" / "eval_seeds")
    assert "metrics/coverage" in seeds.Tags()["scalars"]
    assert len([t for t in seeds.Tags()["images"] if t.startswith("mask/")]) == 3


class _Toy(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.randn(3, 8, 8), "mask": torch.randint(0, 3, (8, 8))}


def _toy_step(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    out = model(batch["image"]).mean()
    return {"a": out ** 2, "b": (out - 1) ** 2}


def test_trainer_logger_writes_every_term_at_its_interval(tmp_path: Path) -> None:
    model = nn.Conv2d(3, 1, 1)
    logger = TensorBoardLogger(tmp_path / "tb", scalar_every=3, image_every=4, max_images=2)
    Trainer(model=model, step_fn=_toy_step, param_groups=[{"params": model.parameters(),
                                                           "lr": 0.1}],
            dataset=_Toy(), out_dir=tmp_path / "out", device=torch.device("cpu"), epochs=2,
            batch_size=4, logger=logger).fit()
    logger.close()
    acc = _events(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("loss/a")] == [1, 3, 6]
    assert {"loss/b", "loss/total", "lr/group0", "epoch/a", "epoch/b", "epoch/lr"} <= set(
        acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("epoch/total")] == [4, 8]
    lrs = [e.value for e in acc.Scalars("lr/group0")]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] < lrs[0]  # the lr used by each step
    assert [e.step for e in acc.Images("train/input")] == [1, 4, 8]
    assert "train/mask" in acc.Tags()["images"]


def test_resumed_training_logs_each_step_once(tmp_path: Path) -> None:
    def trainer(logger: TensorBoardLogger) -> Trainer:
        torch.manual_seed(0)
        model = nn.Conv2d(3, 1, 1)
        return Trainer(model=model, step_fn=_toy_step,
                       param_groups=[{"params": model.parameters(), "lr": 0.1}],
                       dataset=_Toy(), out_dir=tmp_path / "out", device=torch.device("cpu"),
                       epochs=2, batch_size=4, checkpoint_every=2, logger=logger)

    class Stop(Exception):
        pass

    first = trainer(TensorBoardLogger(tmp_path / "tb", scalar_every=1, image_every=0))
    real = first.train_step
    calls = {"n": 0}

    def dying(batch):
        calls["n"] += 1
        if calls["n"] == 4:  # after step 3; the last checkpoint is at step 2
            raise Stop
        return real(batch)

    first.train_step = dying  # type: ignore[method-assign]
    with pytest.raises(Stop):
        first.fit()
    first.logger.close()  # type: ignore[union-attr]
    logger = TensorBoardLogger(tmp_path / "tb", scalar_every=1, image_every=0)
    trainer(logger).fit()
    logger.close()
    assert [e.step for e in _events(tmp_path / "tb").Scalars("loss/a")] == list(range(1, 9))


def _fake_run(workdir: Path, name: str, root: Path, miou: float) -> Path:
    """A run directory with manifests and metrics of an eval_cam and an eval_seeds stage."""
    cfg = load_config(SMOKE, [f"data.root={root}", f"pipeline.name={name}"])
    run = workdir / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    thresholds = [round(0.1 * i, 2) for i in range(10)]
    curve = [miou * (1 - abs(t - 0.3)) for t in thresholds]
    iou = {"background": 0.9, "cat": miou}
    write_result(run / "eval_cam", {
        "split": "train",
        "fixed": {"threshold": 0.15, "miou": curve[1], "iou": iou, "precision": iou,
                  "recall": iou},
        "sweep": {"thresholds": thresholds, "miou": curve, "best_threshold": 0.3,
                  "best_miou": max(curve), "per_image_best_thresholds": {"a": 0.2, "b": 0.4}},
    })
    write_result(run / "eval_seeds", {"split": "train", "miou": miou, "iou": iou,
                                      "precision": iou, "recall": iou, "coverage": 0.8})
    summaries = {
        "eval_cam": {"split": "train", "miou": curve[1], "threshold": 0.15, "precision": 0.5,
                     "recall": 0.5, "oracle_miou": max(curve), "oracle_threshold": 0.3},
        "eval_seeds": {"split": "train", "miou": miou, "precision": 0.6, "recall": 0.4,
                       "coverage": 0.8, "contour_f": 0.3},
    }
    for stage, summary in summaries.items():
        write_manifest(run / stage, {"stage": stage, "summary": summary,
                                     "finished_at": "2026-01-01T00:00:00"})
    return run


def test_every_mask_folder_is_found_and_the_worst_image_comes_first(
        tmp_path: Path, synthetic_root: Path) -> None:
    from wsss.data import build_dataset
    from wsss.data.saliency import save_saliency
    from wsss.io import save_cams, save_mask

    run = _fake_run(tmp_path, "folders", synthetic_root, 0.5)
    cfg = load_config(SMOKE, [f"data.root={synthetic_root}"])
    dataset = build_dataset(cfg.data, "train")
    names = dataset.names[:3]
    gts = [dataset.load_mask(i) for i in range(3)]
    for name, gt in zip(names, gts):
        save_cams(run / "make_cam" / "cams" / f"{name}.npz",
                  np.zeros((1,) + gt.shape, np.float32), np.array([1]))
        save_mask(run / "make_masks" / "masks" / f"{name}.png", gt)  # perfect
        save_mask(run / "make_masks" / "masks_clean" / f"{name}.png", gt)
    # the folder scored last orders the gallery: perfect, all background, GT with half the
    # foreground set to background
    half = gts[2].copy()
    half[: half.shape[0] // 2][half[: half.shape[0] // 2] != 255] = 0
    for name, mask in zip(names, [gts[0], np.zeros_like(gts[1]), half]):
        save_mask(run / "make_masks" / "crf" / f"{name}.png", mask)
    # a grayscale folder beside the masks (AuxSegNet's updated saliency) is not a mask folder
    save_saliency(run / "make_masks" / "saliency" / f"{names[0]}.png",
                  np.full(gts[0].shape, 0.6, np.float32))
    (run / "make_cam" / "probs").mkdir()
    np.savez(run / "make_cam" / "probs" / "x.npz", probs=np.zeros(2))  # not CAMs
    for stage in ("make_cam", "make_masks"):
        write_manifest(run / stage, {"stage": stage, "summary": {},
                                     "finished_at": "2026-01-01T00:00:00"})
    iou = {"background": 0.9, "cat": 0.5}
    for second, (stage, folder) in enumerate((("eval_masks_clean", "masks_clean"),
                                              ("eval_crf", "crf")), start=1):
        write_result(run / stage, {"split": "train", "miou": 0.5, "iou": iou, "precision": iou,
                                   "recall": iou, "masks": str(run / "make_masks" / folder)})
        write_manifest(run / stage, {"stage": stage, "summary": {"split": "train", "miou": 0.5},
                                     "finished_at": f"2026-01-01T00:00:0{second}"})
    write_result(run / "eval_crf", {"split": "train", "miou": 0.25, "iou": iou},
                 name="metrics_dense.json")
    info = read_run(run)
    assert [o.label for o in info.output_folders("masks")] == [
        "make_masks", "make_masks/masks_clean", "make_masks/crf"]
    assert [o.label for o in info.output_folders("cams")] == ["make_cam"]
    assert "eval_crf (dense)" in [r.result for r in info.rows()]
    galleries, _ = build_galleries(info, tmp_path / "report")
    g = galleries[0]
    assert g.split == "train" and g.order_stage == "make_masks/crf" and g.num_images == 3
    assert [r.name for r in g.rows] == [names[1], names[2], names[0]]
    assert g.rows[2].miou == pytest.approx(1.0) and g.rows[0].miou < g.rows[1].miou < 1.0
    assert [c.title for c in g.columns] == [
        "image", "CAM · make_cam", "mask · make_masks", "mask · make_masks/masks_clean",
        "mask · make_masks/crf", "ground truth"]


def test_compare_table_curves_and_cli(tmp_path: Path, synthetic_root: Path, capsys) -> None:
    a = _fake_run(tmp_path / "w1", "alpha", synthetic_root, 0.5)
    b = _fake_run(tmp_path / "w2", "beta", synthetic_root, 0.4)
    comparison = compare_runs([a, b], tmp_path / "cmp")
    table = comparison.table()
    assert comparison.labels == ["alpha", "beta"] and comparison.notes == []
    lines = table.splitlines()
    assert len(lines) == 2 + 2 * 3  # header, rule; fixed, oracle and seeds rows per run
    assert "oracle 0.30" in table and "fixed 0.15" in table
    seeds = [line for line in lines if "eval_seeds" in line]
    assert seeds[0].startswith("alpha") and "50.0" in seeds[0] and "40.0" in seeds[1]
    assert comparison.curves_path is not None and comparison.curves_path.stat().st_size > 0
    text = comparison.html_path.read_text()
    assert 'src="miou_vs_threshold.png"' in text and "beta: eval_seeds" in text

    c = _fake_run(tmp_path / "w3", "alpha", tmp_path / "other-data", 0.3)
    (tmp_path / "cmp2").mkdir()
    (tmp_path / "cmp2" / "keep.txt").write_text("not ours")
    assert main(["compare", str(a), str(c), "--out", str(tmp_path / "cmp2")]) == 0
    assert (tmp_path / "cmp2" / "keep.txt").is_file()  # only its own files are replaced
    out = capsys.readouterr().out
    assert "different data" in out and "w1/alpha" in out and "w3/alpha" in out
    assert (tmp_path / "cmp2" / "index.html").is_file()


def test_cli_report_and_run_writes_report(tiny_run, capsys) -> None:
    run_dir, overrides = tiny_run
    assert main(["report", str(run_dir), "--max-images", "2"]) == 0
    assert len(list((run_dir / "report" / "gallery" / "val").glob("*.png"))) == 2 * 4
    config_overrides = [o for o in overrides if not o.startswith("pipeline.workdir")]
    args = ["run", str(SMOKE), "--workdir", str(run_dir.parent)]
    for item in config_overrides:
        args += ["--set", item]
    assert main(args) == 0  # every stage is up to date; the report is rewritten
    out = capsys.readouterr().out
    assert "skipped" in out and f"report: {run_dir / 'report' / 'index.html'}" in out
    assert len(list((run_dir / "report" / "gallery" / "val").glob("*.png"))) == 8 * 4
    assert main(["report", str(run_dir / "nope")]) == 2
