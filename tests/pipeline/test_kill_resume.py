"""Kill -9 inside every stage, resume, and compare every output with an uninterrupted run.

`python -m wsss run` runs as a subprocess. The test hook `WSSS_TEST_KILL_AT_WRITE=N`
(`wsss.io.atomic_write`) makes it SIGKILL itself during its N-th file write, when the temporary
file is complete and not yet moved into place. While the run is dead, every file under an output
name must load; after the resumes, every output (masks, CAMs, checkpoints, metrics, manifests)
must equal the uninterrupted run's, byte for byte, with no temporary file left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from wsss.engine.checkpoint import load_checkpoint
from wsss.cli import main as cli_main
from wsss.io import KILL_AT_WRITE_ENV, is_temporary

from ..conftest import ROOT, SMOKE

# A run small enough for a dozen restarts: 24 + 8 images at 48 px, two epochs with a checkpoint
# every 2 steps, and a resnet18 segnet of 6 iterations. TensorBoard and the HTML report hold
# wall-clock times, so they are off; `stages.json` (timings) and `log.txt` are not compared.
RUN_OVERRIDES = [
    "pipeline.device=cpu", "pipeline.tensorboard=false", "pipeline.report=false",
    "train.epochs=2", "train.checkpoint_every=2",
]
SEGNET_OVERRIDES = [
    "segnet.enabled=true", "segnet.backbone=resnet18", "segnet.iterations=6",
    "segnet.batch_size=4", "segnet.crop_size=48", "segnet.checkpoint_every=2",
    "segnet.crf=false",
]
# stages.json: timings; .lock: the pid and start time of the run holding it; log.txt: the log
# holds times and the kills
NOT_COMPARED = {"stages.json", ".lock", "log.txt"}
# Manifest fields that differ between any two runs: a fresh completion id (so the fingerprints
# built on it), timings, and how many items this particular process computed.
VOLATILE_MANIFEST = {"completion", "fingerprint", "upstream", "resources", "finished_at",
                     "checksum"}


def run_cli(argv: list[str], *, kill_at: int | None, log: Path, fork: bool) -> int:
    """Run `wsss <argv>` in a new process, dying at its `kill_at`-th write; returns its exit code
    (-9 when killed).

    fork=False starts `python -m wsss` (what a user runs). fork=True forks this process, which
    has torch and wsss imported already, and calls `wsss.cli.main` with one torch thread (the
    same for every run compared, and safe after a fork): the same pipeline code, seconds faster.
    """
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_WRITE_ENV}
    if kill_at is not None:
        env[KILL_AT_WRITE_ENV] = str(kill_at)
    with log.open("a") as out:
        out.write(f"--- wsss {' '.join(argv)} (kill at write {kill_at})\n")
        out.flush()
        if not fork:
            env["PYTHONPATH"] = str(ROOT / "src")
            code = subprocess.run([sys.executable, "-m", "wsss", *argv], env=env, cwd=ROOT,
                                  stdout=out, stderr=out, timeout=900).returncode
        else:
            pid = os.fork()
            if pid == 0:  # the child never returns into pytest
                code = 70
                try:
                    os.dup2(out.fileno(), 1)
                    os.dup2(out.fileno(), 2)
                    sys.stdout = sys.stderr = open(out.fileno(), "w", closefd=False)  # noqa: SIM115
                    os.environ.clear()
                    os.environ.update(env)
                    torch.set_num_threads(1)
                    code = cli_main(argv)
                finally:
                    os._exit(code)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code not in (0, -signal.SIGKILL):
        raise AssertionError(f"wsss {' '.join(argv)} failed ({code}):\n{log.read_text()[-3000:]}")
    return code


def run_args(overrides: list[str], workdir: Path, extra: list[str] = ()) -> list[str]:
    args = ["run", str(SMOKE), *extra]
    for item in [*overrides, f"pipeline.workdir={workdir}"]:
        args += ["--set", item]
    return args


def check_loadable(path: Path) -> None:
    """Open a file under an output name completely (a partial file fails here)."""
    suffix = path.suffix
    if suffix in (".png", ".jpg"):
        with Image.open(path) as image:
            image.load()
    elif suffix == ".npz":
        with np.load(path) as data:
            for key in data.files:
                data[key]
    elif suffix == ".pt":
        load_checkpoint(path)  # also verifies the sha256 inside
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".yaml":
        yaml.safe_load(path.read_text())
    elif suffix == ".sha256":
        lines = path.read_text().split()
        assert lines and all(len(d) == 64 for d in lines), path
    else:
        path.read_text()


def scan(folders: list[Path]) -> list[Path]:
    """Check every output file in `folders`; return the temporary files found."""
    temporaries = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            if is_temporary(path):
                temporaries.append(path)
            else:
                check_loadable(path)
    return temporaries


def killed_stage(run_dir: Path, stages: list[str]) -> str:
    """The first stage without a manifest: the one the kill interrupted."""
    for stage in stages:
        if not (run_dir / stage / "manifest.json").is_file():
            return stage
    return "after the last stage"


def canonical(value: object) -> bytes:
    """Bytes that depend only on a checkpoint's content: tensors by dtype, shape and data."""
    if torch.is_tensor(value):
        head = f"tensor {value.dtype} {tuple(value.shape)} ".encode()
        return head + value.cpu().numpy().tobytes()
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {value.shape} ".encode() + value.tobytes()
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return b"{" + b",".join(repr(k).encode() + b":" + canonical(v) for k, v in items) + b"}"
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(canonical(v) for v in value) + b"]"
    return repr(value).encode()


def comparable(path: Path) -> bytes:
    """What must be equal between the runs: a file's bytes; for a manifest, its JSON without
    the per-run fields; for a checkpoint, its content (model, optimizer, scheduler, RNG states,
    step, history). A checkpoint's pickle may differ in bytes only (pickle shares one string
    object where the other run had two equal ones), so its `.sha256` is not compared either;
    `scan` checks that it verifies."""
    if path.name == "manifest.json":
        body = {k: v for k, v in json.loads(path.read_text()).items()
                if k not in VOLATILE_MANIFEST}
        body.get("summary", {}).pop("computed", None)
        return json.dumps(body, sort_keys=True).encode()
    if path.suffix == ".pt":
        return canonical(load_checkpoint(path))
    if path.suffix == ".sha256":
        return b""
    return path.read_bytes()


def outputs(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): comparable(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in NOT_COMPARED}


def assert_same_outputs(reference: Path, resumed: Path) -> None:
    want, got = outputs(reference), outputs(resumed)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"files differ: missing {missing}, extra {extra}"
    different = [name for name in want if want[name] != got[name]]
    assert not different, f"outputs differ after resuming: {different}"


def kill_and_resume(tmp_path: Path, overrides: list[str], kill_points: list[int],
                    stages: list[str], *, fork: bool, extra: list[str] = ()) -> list[str]:
    """Run the pipeline once uninterrupted (the reference, then moved aside), then again in the
    same folders with a kill at each of `kill_points` (the N-th write of each new process) until
    a run finishes, and resume it to the end. Compares every output, and the data folder when
    the run generates it. Returns the stage each kill interrupted."""
    workdir = tmp_path / "runs"
    run_dir = workdir / "smoke"
    data_root = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("data.root=")))
    generates = not data_root.exists()
    args = run_args(overrides, workdir, extra)
    log = tmp_path / "runs.log"
    assert run_cli(args, kill_at=None, log=log, fork=fork) == 0
    reference = tmp_path / "reference"
    run_dir.rename(reference)
    if generates:
        data_root.rename(tmp_path / "reference-data")
    killed = []
    for kill_at in kill_points:
        if run_cli(args, kill_at=kill_at, log=log, fork=fork) == 0:
            break
        killed.append(killed_stage(run_dir, stages))
        # The kill landed inside a write: its complete temporary file is there, under no output
        # name, and every file under an output name loads.
        assert scan([run_dir, data_root]), f"kill {len(killed)} at write {kill_at}: no temporary"
    assert run_cli(args, kill_at=None, log=log, fork=fork) == 0
    assert scan([run_dir, data_root]) == [], "temporary files left after the resume"
    assert_same_outputs(reference, run_dir)
    if generates:
        assert_same_outputs(tmp_path / "reference-data", data_root)
    return killed


def test_two_kills_resume_to_identical_outputs(tmp_path: Path, synthetic_root: Path) -> None:
    """Fast variant (forked runs, up to make_cam): a kill in training, one among the CAMs."""
    stages = ["data", "train_cam", "make_cam"]
    overrides = [f"data.root={synthetic_root}", *RUN_OVERRIDES]
    # 3 steps per epoch, checkpoints after steps 2 and 4 and at each epoch's end, one write
    # each (the digest is inside the file). Process 1 writes config.yaml, data's in-progress
    # marker and manifest, train_cam's marker, then last.pt at steps 2, 3 and 4 and 6: its 8th
    # write, the step-6 checkpoint, is killed, so it resumes mid-epoch 2 from step 4.
    # Process 2 finishes training and dies at its 14th write, among the CAM files.
    killed = kill_and_resume(tmp_path, overrides, [8, 14], stages, fork=True,
                             extra=["--until", "make_cam"])
    assert killed == ["train_cam", "make_cam"]


@pytest.mark.slow
def test_a_dozen_kills_across_every_stage(tmp_path: Path) -> None:
    """Kills at seeded-random writes until the run finishes: the data generation, both trainings
    and every per-image stage are each interrupted at least once."""
    stages = ["data", "train_cam", "make_cam", "eval_cam", "make_seeds", "eval_seeds",
              "train_segnet", "predict_val", "eval_val"]
    base = [f"data.root={tmp_path / 'data'}", "pipeline.generate_data=true", *RUN_OVERRIDES,
            *SEGNET_OVERRIDES]
    # The first kill lands in the data generation (its 5th write, a split list); the others
    # are seeded-random, about 12 writes apart (a run makes about 170 writes).
    rng = random.Random(10)
    points = [5] + [rng.randint(6, 18) for _ in range(40)]
    killed = kill_and_resume(tmp_path, base, points, stages, fork=False)
    assert len(killed) >= 10, killed
    assert {"data", "train_cam", "make_cam", "make_seeds", "train_segnet",
            "predict_val"} <= set(killed), killed
