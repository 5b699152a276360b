"""Real use (issue 21): config values checked early, odd images, predict on real folders,
file modes, messages, logs and speed. CLI-level where the user meets the behaviour."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main

from .conftest import SMOKE


def run(capsys, *argv: object) -> tuple[int, str, str]:
    """`wsss <argv>` in this process: exit code, stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line; fails on a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("wsss: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Item 9: output files honour the umask
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(umask: int, tmp_path: Path, capsys) -> None:
    old = os.umask(umask)
    try:
        code, _, err = run(capsys, "synth", "--out", tmp_path / "d", "--num-train", 2,
                           "--num-val", 1, "--image-size", 32)
    finally:
        os.umask(old)
    assert code == 0, err
    files = [p for p in (tmp_path / "d").rglob("*") if p.is_file()]
    assert files
    modes = {stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == {0o666 & ~umask}, {oct(m) for m in modes}


# ---------------------------------------------------------------------------------------------
# Item 6: config values checked before any stage runs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "key", "valid"), [
    ("train.epochs=-1", "train.epochs", ">= 1"),
    ("train.epochs=0", "train.epochs", ">= 1"),
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("method.cam_scales=[]", "method.cam_scales", "a non-empty list, each > 0"),
    ("method.cam_scales=[0]", "method.cam_scales", "a non-empty list, each > 0"),
    ("eval.sweep_step=0", "eval.sweep_step", "in (0, 1]"),
    ("method.seed_fg_threshold=2", "method.seed_fg_threshold", "in [0.0, 1.0]"),
    ("model.backbone=resnet5", "model.backbone", "one of resnet101, resnet18"),
    ("train.optimizer=adamw", "train.optimizer", "one of sgd, adam"),
    ("train.resize_long=[640,320]", "train.resize_long", "low <= high"),
    ("train.crop_size=0", "train.crop_size", ">= 1"),
    ("train.lr=-1", "train.lr", "> 0"),
    ("pipeline.device=tpu", "pipeline.device", "auto, cpu, cuda or cuda:N"),
    ("pipeline.device=cuda:99", "pipeline.device", "valid here: auto, cpu"),
])
def test_bad_config_values_stop_before_any_stage(override: str, key: str, valid: str,
                                                 tmp_path: Path, synthetic_root: Path,
                                                 capsys) -> None:
    code, _, err = run(capsys, "run", SMOKE, "--workdir", tmp_path / "runs", "--set",
                       f"data.root={synthetic_root}", "--set", override)
    line = error_line(err)
    assert code == 2 and f"'{key}'" in line and valid in line, line
    assert not (tmp_path / "runs").exists()  # nothing ran, not even the data stage


def test_cuda_without_a_gpu_is_one_line(tmp_path: Path, synthetic_root: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run(capsys, "run", SMOKE, "--workdir", tmp_path / "runs", "--device", "cuda",
                       "--set", f"data.root={synthetic_root}")
    assert code == 2 and "'pipeline.device' = 'cuda': this machine has 0 CUDA GPU(s)" in \
        error_line(err)


# ---------------------------------------------------------------------------------------------
# Item 17: several pairs after one --set; `wsss compare runs/*` with its own output folder
# ---------------------------------------------------------------------------------------------

def test_one_set_flag_takes_several_pairs(tmp_path: Path, synthetic_root: Path, capsys) -> None:
    code, _, err = run(capsys, "run", SMOKE, "--workdir", tmp_path / "runs", "--set",
                       f"data.root={synthetic_root}", "pipeline.device=cpu", "train.epochs=0")
    assert code == 2 and "'train.epochs' = 0" in error_line(err)  # the third pair was read


def test_compare_glob_skips_its_own_output_folder(tmp_path: Path, capsys) -> None:
    from wsss.config import dump_config, load_config

    runs = tmp_path / "runs"
    for name in ("a", "b"):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_text(dump_config(load_config(SMOKE)))
    code, _, err = run(capsys, "compare", runs / "a", runs / "b")
    assert code == 0, err
    assert (runs / "compare" / "index.html").is_file()
    code, out, err = run(capsys, "compare", *sorted(runs.iterdir()))  # runs/* names runs/compare
    assert code == 0, err
    assert f"note: skipped {runs / 'compare'}: a comparison's output folder" in out
