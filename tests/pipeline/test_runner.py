"""Pipeline runner: end to end, skip, rerun on change, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import wsss.methods.base as base
from wsss.config import load_config
from wsss.engine.trainer import Trainer
from wsss.pipeline.artifacts import ManifestError, read_manifest
from wsss.pipeline.runner import run_pipeline

from ..conftest import SMOKE

STAGES = ["data", "train_cam", "eval_cls", "make_cam", "eval_cam", "make_seeds", "eval_seeds"]


class Killed(Exception):
    """Stands in for a process killed midway."""


def _status(result) -> dict[str, str]:
    return {o.name: o.status for o in result.outcomes}


def test_end_to_end_skip_and_rerun_on_change(smoke_overrides: list[str]) -> None:
    cfg = load_config(SMOKE, smoke_overrides)
    first = run_pipeline(cfg)
    assert _status(first) == {s: "ran" for s in STAGES}
    run_dir = first.run_dir
    assert (run_dir / "config.yaml").is_file()
    names = (Path(cfg.data.root) / "ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(p.stem for p in (run_dir / "make_cam/cams").glob("*.npz")) == sorted(names)
    assert sorted(p.stem for p in (run_dir / "make_seeds/masks").glob("*.png")) == sorted(names)
    summary = read_manifest(run_dir / "eval_cam")["summary"]
    assert 0.0 <= summary["miou"] <= 1.0 and summary["oracle_miou"] >= summary["miou"] - 1e-9

    again = run_pipeline(cfg)
    assert _status(again) == {s: "skipped" for s in STAGES}

    changed = load_config(SMOKE, smoke_overrides + ["method.seed_fg_threshold=0.5"])
    third = run_pipeline(changed)
    status = _status(third)
    assert [s for s in STAGES if status[s] == "ran"] == ["make_seeds", "eval_seeds"]

    forced = run_pipeline(changed, force=["make_cam"])
    status = _status(forced)
    assert [s for s in STAGES if status[s] == "ran"] == STAGES[3:]


def test_killed_make_cam_resumes_without_recomputing(smoke_overrides, monkeypatch) -> None:
    cfg = load_config(SMOKE, smoke_overrides)
    real = base.save_cams
    written: list[str] = []

    def dying(path, *args, **kwargs):
        if len(written) == 5:
            raise Killed
        real(path, *args, **kwargs)
        written.append(Path(path).stem)

    monkeypatch.setattr(base, "save_cams", dying)
    with pytest.raises(Killed):
        run_pipeline(cfg)
    monkeypatch.setattr(base, "save_cams", real)
    run_dir = Path(cfg.pipeline.workdir) / cfg.pipeline.name
    assert read_manifest(run_dir / "make_cam") is None
    assert len(list((run_dir / "make_cam/cams").glob("*.npz"))) == 5

    result = run_pipeline(cfg)
    status = _status(result)
    assert status["train_cam"] == "skipped" and status["make_cam"] == "resumed"
    summary = read_manifest(run_dir / "make_cam")["summary"]
    assert summary["computed"] == summary["images"] - 5
    # CAM files are float32 and carry IRN's stride-4 map (issue 20, items 3 and 4).
    with np.load(sorted((run_dir / "make_cam/cams").glob("*.npz"))[0]) as data:
        cams, strided = data["cams"], data["cams_strided"]
    h, w = cams.shape[1:]
    assert cams.dtype == strided.dtype == np.float32
    assert strided.shape == (cams.shape[0], (h - 1) // 4 + 1, (w - 1) // 4 + 1)


def test_killed_training_resumes_from_checkpoint(smoke_overrides, monkeypatch) -> None:
    cfg = load_config(SMOKE, smoke_overrides + ["train.epochs=2"])
    real = Trainer.train_step
    calls = {"n": 0}

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 steps per epoch: dies in the second epoch
            raise Killed
        return real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(Killed):
        run_pipeline(cfg)
    run_dir = Path(cfg.pipeline.workdir) / cfg.pipeline.name
    assert (run_dir / "train_cam/last.pt").is_file()
    assert not (run_dir / "train_cam/model.pt").exists()

    monkeypatch.setattr(Trainer, "train_step", real)
    calls["n"] = 0
    result = run_pipeline(cfg, until="train_cam")
    assert _status(result)["train_cam"] == "resumed"
    history = json.loads((run_dir / "train_cam/history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert read_manifest(run_dir / "train_cam")["summary"]["steps"] == 6


def test_only_and_until(smoke_overrides) -> None:
    cfg = load_config(SMOKE, smoke_overrides)
    with pytest.raises(RuntimeError, match="needs train_cam"):
        run_pipeline(cfg, only=["make_cam"])
    result = run_pipeline(cfg, until="train_cam")
    assert [o.name for o in result.outcomes] == ["data", "train_cam"]
    result = run_pipeline(cfg, only=["make_cam"])
    assert [o.name for o in result.outcomes] == ["make_cam"]
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline(cfg, only=["nope"])


def test_corrupt_manifest_is_refused(smoke_overrides) -> None:
    cfg = load_config(SMOKE, smoke_overrides)
    result = run_pipeline(cfg, until="data")
    manifest = result.run_dir / "data" / "manifest.json"
    body = json.loads(manifest.read_text())
    body["summary"]["root"] = "elsewhere"
    manifest.write_text(json.dumps(body))
    with pytest.raises(ManifestError, match="checksum"):
        run_pipeline(cfg, until="data")
