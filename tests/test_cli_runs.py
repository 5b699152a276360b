"""Real use of `wsss run`: image-level labels only, given roots, consistent and locked run
directories, preset names and absolute paths, failures that keep good outputs, one-line stops."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from wsss.cli import main
from wsss.config import find_preset, load_config, preset_anchor, presets_dir
from wsss.pipeline.artifacts import read_manifest, read_plan

from .conftest import ROOT, SMOKE

# Cheapest smoke runs: one scale without flip, no TensorBoard unless a test wants it.
FAST = ("method.cam_scales=[1.0]", "method.cam_flip=false", "pipeline.tensorboard=false")
TINY_SEGNET = ("segnet.enabled=true", "segnet.backbone=resnet18", "segnet.iterations=2",
               "segnet.batch_size=4", "segnet.crop_size=48", "segnet.checkpoint_every=0",
               "segnet.crf=false", "segnet.test_scales=[1.0]")


def run_argv(workdir: Path, *sets: str, preset: str | Path = SMOKE, extra: tuple = ()
             ) -> list[str]:
    argv = ["run", str(preset), "--workdir", str(workdir), "--device", "cpu", *extra]
    for item in sets:
        argv += ["--set", item]
    return argv


def one_line(err: str) -> str:
    """The single `wsss:` line of a failed or stopped run; fails on a traceback."""
    assert "Traceback" not in err and "Exception in thread" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("wsss:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def image_level_root(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared synthetic images as a user's own VOC-layout folder: image-level labels in
    labels.csv, no SegmentationClass/, no meta.json, no saliency maps."""
    from wsss.data.voc import SegmentationDataset

    root = tmp_path_factory.mktemp("own") / "data"
    shutil.copytree(synthetic_root, root)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "labels"])
        for split in ("train", "val"):
            dataset = SegmentationDataset(root=root, split=split, labels_from="masks")
            for i, name in enumerate(dataset.names):
                present = dataset.label_vector(i).nonzero()[0]
                writer.writerow([name, ";".join(dataset.class_names[c + 1] for c in present)])
    for folder in ("SegmentationClass", "SaliencyMaps"):
        shutil.rmtree(root / folder)
    (root / "meta.json").unlink()
    return root


# 1 -------------------------------------------------------------------------------------------
def test_image_level_labels_only_run_end_to_end(image_level_root: Path, tmp_path: Path,
                                                capsys) -> None:
    workdir = tmp_path / "runs"
    argv = run_argv(workdir, f"data.root={image_level_root}", *FAST, *TINY_SEGNET)
    assert main(argv) == 0
    captured = capsys.readouterr()
    run = workdir / "smoke"
    # Every scoring stage is skipped with one line saying why; nothing else is.
    skipped = [line for line in captured.err.splitlines() if "no ground-truth masks" in line
               and line.split()[1] == "stage"]
    assert {line.split()[2] for line in skipped} == {"eval_cam", "eval_seeds", "eval_val"}
    assert "labels from csv" in skipped[0]
    for stage in ("eval_cam", "eval_seeds", "eval_val"):
        assert read_manifest(run / stage) is None
    # Pseudo-masks, the final network and its predictions are made.
    assert len(list((run / "make_seeds/masks").glob("*.png"))) == 24
    assert (run / "train_segnet/model.pt").is_file()
    assert len(list((run / "predict_val/masks").glob("*.png"))) == 8
    # The data manifest, the log and the report say where the labels came from.
    summary = read_manifest(run / "data")["summary"]
    assert summary["labels"] == {"source": "csv", "file": str(image_level_root / "labels.csv")}
    assert summary["kind"] == "voc-layout"
    assert not any(v["has_masks"] for v in summary["splits"].values())
    assert f"image-level labels from CSV {image_level_root / 'labels.csv'}" in captured.err
    html = (run / "report/index.html").read_text()
    assert "CSV " in html and "voc-layout at" in html
    assert "synthetic at" not in html  # a user's folder under a synthetic preset
    assert "gallery/train/000_image.png" in html and "gallery/val/000_image.png" in html
    assert "ground truth</th>" not in html  # galleries without a ground-truth column
    assert "no ground-truth masks" in html


TINY_CAM = ("train.epochs=1", "train.batch_size=8", "train.crop_size=48",
            "train.resize_long=[40,56]", "eval.plots=false", "pipeline.report=false")
METHOD_RUNS = {
    "amn": ("synthetic/amn", ["method.amn_cam_scales=[1.0]", "method.amn_train.epochs=1",
                              "method.amn_train.batch_size=8", "method.amn_train.crop_size=48",
                              "method.irn.train.epochs=1", "method.irn.train.batch_size=8",
                              "method.irn.train.crop_size=48", "method.irn.train_radius=5",
                              "method.irn.num_steps=16", "method.irn.boundary_pad=0"]),
    "affinitynet": (str(SMOKE), ["method.name=affinitynet",
                                 "method.affinitynet.backbone_weights=cam",
                                 "method.affinitynet.train.epochs=1",
                                 "method.affinitynet.train.batch_size=8",
                                 "method.affinitynet.train.crop_size=48",
                                 "method.affinitynet.num_steps=8"]),
    "one_stage": ("synthetic/one_stage", ["method.pretrain_epochs=1", "method.crf=false",
                                          "train.resize_long=null"]),  # a resized crop
    "icam": ("synthetic/icam", ["train.batch_size=4"]),
    "auxsegnet": ("synthetic/auxsegnet", ["method.saliency_dir={synthetic_root}/SaliencyMaps",
                                          "method.num_rounds=1", "method.round_train.epochs=1",
                                          "method.round_train.batch_size=8",
                                          "method.round_train.crop_size=48",
                                          "method.head_channels=16"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHOD_RUNS))
def test_every_method_runs_on_image_level_labels(name: str, image_level_root: Path,
                                                 synthetic_root: Path, tmp_path: Path,
                                                 capsys) -> None:
    preset, extra = METHOD_RUNS[name]
    cam_scales = [] if name == "one_stage" else ["method.cam_scales=[1.0]"]
    sets = [f"data.root={image_level_root}", *cam_scales, *TINY_CAM,
            *(item.format(synthetic_root=synthetic_root) for item in extra)]
    assert main(run_argv(tmp_path / "runs", *sets, preset=preset)) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    run = next((tmp_path / "runs").iterdir())
    plan = read_plan(run)
    # eval_cls scores the classifier on image-level labels, which this data has: it runs.
    scoring = [s for s in plan["stages"] if s.startswith("eval_") and s != "eval_cls"]
    assert scoring and set(plan["current"]) == set(plan["stages"]) - set(scoring)
    for stage in scoring:
        assert f"stage {stage:<14} skipped: split" in err


# 2 -------------------------------------------------------------------------------------------
def test_mistyped_root_is_an_error_not_generated_data(tmp_path: Path, capsys) -> None:
    typo = tmp_path / "dtaa"
    assert main(run_argv(tmp_path / "runs", f"data.root={typo}", *FAST)) == 2
    line = one_line(capsys.readouterr().err)
    assert f"data.root: {typo} does not exist" in line and "wsss synth --out" in line
    assert not typo.exists()


def test_generation_only_at_the_preset_root() -> None:
    assert load_config(SMOKE).pipeline.generate_data is True
    assert load_config(SMOKE, ["data.root=/x"]).pipeline.generate_data is False
    assert load_config(SMOKE, ["data.root=/x", "pipeline.generate_data=true"]
                       ).pipeline.generate_data is True


# 3 -------------------------------------------------------------------------------------------
def test_other_method_in_existing_run_directory_is_refused(synthetic_root: Path,
                                                           tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "runs"
    base = (f"data.root={synthetic_root}", *FAST)
    assert main(run_argv(workdir, *base, extra=("--until", "data"))) == 0
    config = (workdir / "smoke/config.yaml").read_text()
    capsys.readouterr()
    assert main(run_argv(workdir, *base, "method.name=amn", extra=("--until", "data"))) == 2
    line = one_line(capsys.readouterr().err)
    assert "holds a cam_baseline run" in line and "method amn" in line
    assert "--set pipeline.name=NAME" in line and "--workdir" in line
    assert (workdir / "smoke/config.yaml").read_text() == config
    # Another data root is refused the same way.
    assert main(run_argv(workdir, f"data.root={tmp_path}", *FAST[1:], extra=("--until", "data"))
                ) == 2
    assert f"data.root {tmp_path}" in one_line(capsys.readouterr().err)


def test_results_of_stages_made_from_older_inputs_are_not_shown(synthetic_root: Path,
                                                                tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "runs"
    base = (f"data.root={synthetic_root}", *FAST, "pipeline.report=false")
    assert main(run_argv(workdir, *base)) == 0
    out = capsys.readouterr().out
    assert "eval_seeds" in out
    # New seeds, scoring not rerun: the old eval_seeds numbers belong to the old seeds.
    assert main(run_argv(workdir, *base, "method.seed_fg_threshold=0.5",
                         extra=("--until", "make_seeds"))) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0]
    assert "eval_cam (fixed τ)" in table
    assert "not shown (outside this run's plan, or made from older inputs): eval_seeds" in table
    assert [row for row in table.splitlines() if row.startswith("eval_seeds")] == []
    plan = read_plan(workdir / "smoke")
    assert "eval_seeds" in plan["stages"] and "eval_seeds" not in plan["current"]
    from wsss.report import write_report

    html = write_report(workdir / "smoke").read_text()
    assert "stale: outside the plan or older inputs" in html
    assert ">eval_seeds</td><td>" not in html.split('id="results"')[1].split("</section>")[0]
    # A stage taken out of the plan: its old scores are not shown either.
    assert main(run_argv(workdir, *base, "method.seed_fg_threshold=0.5",
                         "pipeline.stages=[data,train_cam,make_cam]")) == 0
    table = capsys.readouterr().out.split("\n\n")[0]
    assert "eval_cam" not in table.replace("made from older inputs): eval_cam", "")
    assert table.endswith("not shown (outside this run's plan, or made from older inputs): "
                          "eval_cam, eval_cls, eval_seeds")


# 4 -------------------------------------------------------------------------------------------
def _hold_lock(run_dir: Path, seconds: float) -> subprocess.Popen:
    """A process that holds the run directory's lock for `seconds` (no torch import)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(run_dir / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'pid %d, started now' % os.getpid())\n"
            "print('locked', flush=True)\n"
            f"time.sleep({seconds})\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_run_on_a_busy_run_directory_stops_or_waits(synthetic_root: Path,
                                                           tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "runs"
    argv = run_argv(workdir, f"data.root={synthetic_root}", *FAST, "pipeline.report=false",
                    extra=("--until", "data"))
    holder = _hold_lock(workdir / "smoke", 60)
    try:
        assert main(argv) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{workdir / 'smoke'} is in use by another wsss run (pid {holder.pid}" in line
        assert "--wait" in line
        assert not (workdir / "smoke/config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    holder = _hold_lock(workdir / "smoke", 1.5)
    began = time.monotonic()
    assert main(argv + ["--wait"]) == 0
    assert time.monotonic() - began > 0.5 and holder.wait() == 0
    assert "waiting for the run holding" in capsys.readouterr().err


# 5 -------------------------------------------------------------------------------------------
def test_run_by_preset_name_from_anywhere_records_absolute_paths(
        synthetic_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["list"]) == 0
    assert "synthetic/demo" in capsys.readouterr().out
    # Relative paths on the command line resolve against the current directory, once.
    os.symlink(synthetic_root, elsewhere / "mydata")
    argv = ["run", "synthetic/smoke", "--until", "data", "--workdir", "runs", "--device", "cpu",
            "--set", "data.root=mydata"]
    assert main(argv) == 0
    saved = yaml.safe_load((elsewhere / "runs/smoke/config.yaml").read_text())
    assert saved["data"]["root"] == str((elsewhere / "mydata").resolve())
    assert saved["pipeline"]["workdir"] == str(elsewhere / "runs")
    # A preset's own relative paths resolve against the repository, not the current directory.
    cfg = load_config(find_preset("synthetic/smoke"))
    assert cfg.data.root == str(ROOT / "data" / "synthetic-smoke")
    assert preset_anchor(presets_dir() / "synthetic/smoke.yaml") == ROOT
    capsys.readouterr()
    assert main(["run", "synthetic/smok", "--until", "data"]) == 2
    assert "did you mean synthetic/smoke" in one_line(capsys.readouterr().err)


def test_user_preset_paths_resolve_against_its_folder(tmp_path: Path) -> None:
    preset = tmp_path / "mine" / "run.yaml"
    preset.parent.mkdir()
    preset.write_text(f"base: {SMOKE}\ndata:\n  root: ../images\nmodel:\n  pretrained: none\n")
    cfg = load_config(preset)
    assert cfg.data.root == str(tmp_path / "images") and cfg.model.pretrained == "none"
    assert cfg.pipeline.workdir == str(Path.cwd() / "runs")


# 11 ------------------------------------------------------------------------------------------
def test_corrupt_model_refused_before_good_cams_are_cleared(synthetic_root: Path,
                                                           tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "runs"
    argv = run_argv(workdir, f"data.root={synthetic_root}", *FAST, "pipeline.report=false",
                    extra=("--until", "make_cam"))
    assert main(argv) == 0
    cams = sorted((workdir / "smoke/make_cam/cams").glob("*.npz"))
    model = workdir / "smoke/train_cam/model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv + ["--force", "make_cam"]) == 2
    assert str(model) in one_line(capsys.readouterr().err)
    assert sorted((workdir / "smoke/make_cam/cams").glob("*.npz")) == cams
    assert read_manifest(workdir / "smoke/make_cam") is not None


def test_nan_before_any_checkpoint_names_none(tmp_path: Path) -> None:
    from wsss.engine.trainer import Trainer, TrainingError

    items = [{"image": torch.randn(3), "labels": torch.ones(1)} for _ in range(4)]

    def nan_step(model, batch):
        return {"mse": model(batch["image"]).sum() * float("nan")}

    model = torch.nn.Linear(3, 1)
    trainer = Trainer(model=model, step_fn=nan_step,
                      param_groups=[{"params": list(model.parameters()), "lr": 0.1}],
                      dataset=items, out_dir=tmp_path, device=torch.device("cpu"), epochs=1,
                      batch_size=2)
    with pytest.raises(TrainingError) as info:
        trainer.fit()
    assert "no checkpoint was saved" in str(info.value) and "last.pt" not in str(info.value)


# 12 ------------------------------------------------------------------------------------------
def test_ctrl_c_stops_with_one_line_and_the_rerun_resumes(synthetic_root: Path, tmp_path: Path,
                                                          monkeypatch, capsys) -> None:
    import wsss.methods.base as base

    workdir = tmp_path / "runs"
    argv = run_argv(workdir, f"data.root={synthetic_root}", *FAST, "pipeline.report=false",
                    extra=("--until", "make_cam"))
    real, written = base.save_cams, []

    def interrupted(path, *args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt
        real(path, *args, **kwargs)
        written.append(path)

    monkeypatch.setattr(base, "save_cams", interrupted)
    assert main(argv) == 130
    line = one_line(capsys.readouterr().err)
    assert "interrupted during stage make_cam; rerun the same command to resume" in line
    monkeypatch.setattr(base, "save_cams", real)
    assert main(argv) == 0
    outcome = {o["name"]: o["status"] for o in
               yaml.safe_load((workdir / "smoke/stages.json").read_text())}
    assert outcome["make_cam"] == "resumed" and outcome["train_cam"] == "skipped"


def test_only_without_inputs_is_one_line(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    argv = run_argv(tmp_path / "runs", f"data.root={synthetic_root}", *FAST,
                    extra=("--only", "make_seeds"))
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "stage make_seeds needs make_cam, which has not completed" in line


def test_disk_full_during_tensorboard_writes_is_one_warning(synthetic_root: Path,
                                                            tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    from tensorboard.summary.writer import record_writer

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    argv = run_argv(tmp_path / "runs", f"data.root={synthetic_root}", *FAST[:2],
                    "pipeline.tensorboard=true", "pipeline.report=false",
                    extra=("--until", "eval_cam"))
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    warnings = [line for line in err.splitlines() if "TensorBoard logging to" in line]
    assert warnings and all("No space left on device" in w for w in warnings)
    assert {w.split("TensorBoard logging to ")[1].split()[0].rsplit("/", 1)[1]
            for w in warnings} == {"train_cam", "eval_cam"}
