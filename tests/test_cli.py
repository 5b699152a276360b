"""CLI: help, list, a synthetic end-to-end run, resume, eval and sweep on its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from wsss.cli import main

from .conftest import SMOKE


def test_help_lists_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "wsss", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("run", "eval", "sweep", "list", "synth", "data"):
        assert command in out


def test_list(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "cam_baseline" in out and "resnet50" in out and "make_seeds" in out


def test_run_then_resume_then_eval(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "runs"
    args = ["run", str(SMOKE), "--workdir", str(workdir), "--device", "cpu",
            "--set", f"data.root={synthetic_root}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "eval_cam (fixed τ)" in out and "oracle" in out and "eval_seeds" in out
    assert main(args) == 0
    assert "skipped" in capsys.readouterr().out

    masks = workdir / "smoke" / "make_seeds" / "masks"
    assert main(["eval", "--pred", str(masks), "--data", str(synthetic_root), "--split", "train",
                 "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "contour F" in out
    stored = json.loads((workdir / "smoke" / "eval_seeds" / "metrics.json").read_text())
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert again["miou"] == stored["miou"]

    cams = workdir / "smoke" / "make_cam" / "cams"
    assert main(["sweep", "--pred", str(cams), "--data", str(synthetic_root), "--split", "train",
                 "--out", str(tmp_path / "sw")]) == 0
    assert "oracle best" in capsys.readouterr().out
    assert (tmp_path / "sw" / "miou_vs_threshold.png").stat().st_size > 0


def test_eval_missing_prediction_names_file(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--pred", str(tmp_path / "empty"), "--data", str(synthetic_root),
                 "--split", "val"]) == 2
    assert "prediction missing" in capsys.readouterr().err


def test_bad_override_exits_with_named_key(tmp_path: Path, capsys) -> None:
    assert main(["run", str(SMOKE), "--set", "train.epoch=2", "--workdir", str(tmp_path)]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err


def test_synth_command(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path / "s"), "--num-train", "4", "--num-val", "2",
                 "--image-size", "32", "--grid", str(tmp_path / "grid.png")]) == 0
    assert len((tmp_path / "s/ImageSets/Segmentation/train.txt").read_text().split()) == 4
    assert (tmp_path / "grid.png").stat().st_size > 0
