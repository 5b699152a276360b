"""Faults and bad inputs, checked where the user sees them (the `wsss` command's message).

Each case gives exit code 2 and one `wsss: error:` line naming the file (or config key) and the
mismatch, before any work starts, and leaves no partial file. docs/reliability.md lists them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wsss.methods.cam_baseline as cam_baseline
from wsss.cli import main
from wsss.config import ConfigError, load_config
from wsss.data.saliency import check_saliency_folder
from wsss.data.voc import SegmentationDataset
from wsss.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wsss.engine.trainer import Trainer
from wsss.io import DataError, is_temporary, load_mask, save_mask, write_bytes
from wsss.pipeline.runner import seed_everything
from wsss.predict import load as load_predictor

from .conftest import SMOKE

NAME = "syn_train_000003"  # an image of the synthetic train split


def run(capsys, *argv: str) -> tuple[int, str]:
    """`wsss <argv>` in this process: exit code and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


# Runs here: the smoke preset on the shared synthetic set, two epochs of 3 steps, CAMs at one
# scale without flip (the cheapest CAMs), no TensorBoard or report.
RUN = ("pipeline.tensorboard=false", "pipeline.report=false", "train.epochs=2",
       "method.cam_scales=[1.0]", "method.cam_flip=false")


def run_args(root: Path, workdir: Path, *extra: str) -> list[str]:
    args = ["run", str(SMOKE), "--workdir", str(workdir), "--device", "cpu"]
    for item in (f"data.root={root}", *RUN, *extra):
        args += ["--set", item]
    return args


def error_line(err: str) -> str:
    """The one error line; fails on a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("wsss: error:")]
    assert len(lines) == 1, err
    return lines[0]


def partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and is_temporary(p)]


@pytest.fixture()
def data_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy of the 24 + 8 image synthetic set, to damage."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "data"))


# ---------------------------------------------------------------------------------------------
# Bad data: found by the data stage before any training
# ---------------------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncated_jpeg(root: Path) -> tuple[Path, str]:
    png = root / "JPEGImages" / f"{NAME}.png"
    path = png.with_suffix(".jpg")
    Image.open(png).save(path, quality=95)
    png.unlink()
    _truncate(path)
    return path, "unreadable or truncated image"


def truncated_png_image(root: Path) -> tuple[Path, str]:
    path = root / "JPEGImages" / f"{NAME}.png"
    _truncate(path)
    return path, "unreadable or truncated image"


def truncated_png_mask(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / f"{NAME}.png"
    _truncate(path)
    return path, "unreadable mask"


def zero_byte_image(root: Path) -> tuple[Path, str]:
    path = root / "JPEGImages" / f"{NAME}.png"
    path.write_bytes(b"")
    return path, "empty (0 bytes)"


def zero_byte_mask(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / f"{NAME}.png"
    path.write_bytes(b"")
    return path, "unreadable mask"


def rgb_mask(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / f"{NAME}.png"
    Image.open(path).convert("RGB").save(path)
    return path, "got PIL mode 'RGB' (a colour-coded RGB mask?)"


def sixteen_bit_mask(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / f"{NAME}.png"
    Image.fromarray(load_mask(path).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    return path, "must be an 8-bit index image"


def mask_of_another_size(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / f"{NAME}.png"
    save_mask(path, load_mask(path)[:40, :30])
    return path, "mask is 30x40 but image"


def mask_with_unknown_class(root: Path) -> tuple[Path, str]:
    path = root / "SegmentationClass" / f"{NAME}.png"
    mask = load_mask(path)
    mask[0, 0] = 77
    save_mask(path, mask)
    return path, "mask values [77] outside 0..10 and 255"


def huge_image(root: Path) -> tuple[Path, str]:
    path = root / "JPEGImages" / f"{NAME}.png"
    Image.new("RGB", (5000, 40)).save(path)
    return path, "image is 5000x40, above the maximum side 4096 (data.max_image_side)"


def missing_image(root: Path) -> tuple[Path, str]:
    path = root / "JPEGImages" / f"{NAME}.png"
    path.unlink()
    return path.with_suffix(""), "not found"


BAD_DATA = [truncated_jpeg, truncated_png_image, truncated_png_mask, zero_byte_image,
            zero_byte_mask, rgb_mask, sixteen_bit_mask, mask_of_another_size,
            mask_with_unknown_class, huge_image, missing_image]


@pytest.mark.parametrize("damage", BAD_DATA, ids=[f.__name__ for f in BAD_DATA])
def test_bad_data_is_refused_before_training(damage, data_copy: Path, tmp_path: Path,
                                             capsys) -> None:
    path, problem = damage(data_copy)
    code, err = run(capsys, *run_args(data_copy, tmp_path / "runs"))
    line = error_line(err)
    assert code == 2
    assert str(path) in err and problem in err, err
    assert "problem(s) in split" in line
    assert not (tmp_path / "runs" / "smoke" / "train_cam").exists()  # before work starts


def test_smaller_max_image_side_is_honoured(data_copy: Path, tmp_path: Path, capsys) -> None:
    code, err = run(capsys, *run_args(data_copy, tmp_path / "runs", "data.max_image_side=40"))
    assert code == 2 and "above the maximum side 40 (data.max_image_side)" in err


def test_saliency_map_of_another_shape_names_file(synthetic_root: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(synthetic_root / "SaliencyMaps", tmp_path / "sal"))
    dataset = SegmentationDataset(root=synthetic_root, split="train")
    assert check_saliency_folder(folder, dataset) == len(dataset)
    Image.new("L", (48, 20)).save(folder / f"{NAME}.png")
    with pytest.raises(DataError, match=rf"{NAME}\.png: saliency map is 48x20 but the image "
                                        r"is 48x48"):
        check_saliency_folder(folder, dataset)


# ---------------------------------------------------------------------------------------------
# Config errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "expected"), [
    ("train.lrr=0.1", "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    ("pipline.seed=1", "unknown config key 'pipline"),
    ("train.epochs=many", "invalid value for config key 'train.epochs'"),
    ("method.cam_scale=[1.0]", "did you mean 'method.cam_scales'?"),
])
def test_config_errors_name_the_key(override: str, expected: str, tmp_path: Path,
                                    capsys) -> None:
    code, err = run(capsys, "run", SMOKE, "--workdir", tmp_path, "--set", override)
    assert code == 2 and expected in error_line(err)
    assert not (tmp_path / "smoke").exists()


def test_missing_dataset_root_names_the_key(tmp_path: Path, capsys) -> None:
    code, err = run(capsys, "run", SMOKE, "--workdir", tmp_path, "--set",
                    f"data.root={tmp_path / 'nowhere'}", "--set", "data.dataset=voc")
    expected = f"data.root: dataset root not found: {tmp_path / 'nowhere'}"
    assert code == 2 and expected in error_line(err)


def test_unknown_key_suggestion_is_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'data\.max_image_sid'; did you mean "
                                          r"'data\.max_image_side'\?"):
        load_config(SMOKE, ["data.max_image_sid=10"])


# ---------------------------------------------------------------------------------------------
# Corrupt or foreign checkpoints and manifests
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke run up to the trained classifier (last.pt holds epoch 2), made once."""
    workdir = tmp_path_factory.mktemp("base") / "runs"
    code = main(run_args(synthetic_root, workdir) + ["--until", "train_cam"])
    assert code == 0
    return workdir / "smoke"


@pytest.fixture()
def finished_run(base_run: Path, synthetic_root: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """A private copy of `base_run` and the arguments that continue it."""
    run_dir = Path(shutil.copytree(base_run, tmp_path / "runs" / "smoke"))
    return run_args(synthetic_root, tmp_path / "runs"), run_dir


def _reopen_training(run_dir: Path) -> Path:
    """Turn the finished train_cam of a run into one killed after its last checkpoint (what a
    kill between last.pt and model.pt leaves): the next run resumes it. Returns last.pt."""
    stage = run_dir / "train_cam"
    manifest = json.loads((stage / "manifest.json").read_text())
    (stage / ".inprogress.json").write_text(json.dumps({"fingerprint": manifest["fingerprint"]}))
    for name in ("manifest.json", "model.pt", "history.json"):
        (stage / name).unlink()
    return stage / "last.pt"


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_model_checkpoint_is_refused(finished_run, capsys) -> None:
    args, run_dir = finished_run
    _flip_byte(run_dir / "train_cam" / "model.pt")
    code, err = run(capsys, *args, "--until", "make_cam", "--force", "make_cam")
    assert code == 2
    assert f"{run_dir / 'train_cam' / 'model.pt'}: sha256 does not match" in error_line(err)


def test_corrupt_manifest_is_refused(finished_run, capsys) -> None:
    args, run_dir = finished_run
    manifest = run_dir / "train_cam" / "manifest.json"
    body = json.loads(manifest.read_text())
    body["summary"]["steps"] = 1
    manifest.write_text(json.dumps(body))
    code, err = run(capsys, *args, "--until", "make_cam")
    assert code == 2 and f"{manifest}: manifest checksum mismatch" in error_line(err)


def _interrupt_training(args: list[str], run_dir: Path, capsys, monkeypatch) -> None:
    """Leave train_cam in progress with last.pt after epoch 1 (a NaN in epoch 2 stops it)."""
    shutil.rmtree(run_dir / "train_cam")
    real = cam_baseline.CamBaseline.training_step
    calls = {"n": 0}

    def nan_in_step_5(self, model, batch):
        calls["n"] += 1
        terms = real(self, model, batch)
        return {"cls": terms["cls"] * float("nan")} if calls["n"] == 5 else terms

    monkeypatch.setattr(cam_baseline.CamBaseline, "training_step", nan_in_step_5)
    code, err = run(capsys, *args, "--until", "train_cam")
    monkeypatch.setattr(cam_baseline.CamBaseline, "training_step", real)
    assert code == 2
    last = run_dir / "train_cam" / "last.pt"
    assert error_line(err) == (f"wsss: error: non-finite loss term 'cls' = nan at epoch 2, "
                               f"step 5; the last good checkpoint is {last}")
    assert load_checkpoint(last)["global_step"] == 3  # epoch 1 (3 steps), intact


def test_nan_loss_stops_naming_step_and_term_then_resumes(finished_run, capsys,
                                                          monkeypatch) -> None:
    args, run_dir = finished_run
    reference = (run_dir / "train_cam" / "model.pt").read_bytes()
    _interrupt_training(args, run_dir, capsys, monkeypatch)
    code, err = run(capsys, *args, "--until", "train_cam")
    assert code == 0, err
    assert "resumed from" in err
    # The resumed training ends where the uninterrupted one did (same weights).
    assert (run_dir / "train_cam" / "model.pt").read_bytes() == reference


def test_foreign_checkpoint_on_resume_names_file_and_mismatch(finished_run, capsys) -> None:
    args, run_dir = finished_run
    last = _reopen_training(run_dir)
    state = load_checkpoint(last)
    state["model"]["classifier.weight"] = torch.zeros(5, 512, 1, 1)  # another number of classes
    save_checkpoint(last, state)
    code, err = run(capsys, *args, "--until", "train_cam")
    assert code == 2
    assert f"{last}: checkpoint does not fit the model" in error_line(err)
    assert "classifier.weight (5, 512, 1, 1) vs (" in err


def test_corrupt_last_checkpoint_is_refused_on_resume(finished_run, capsys) -> None:
    args, run_dir = finished_run
    last = _reopen_training(run_dir)
    _flip_byte(last)
    code, err = run(capsys, *args, "--until", "train_cam")
    assert code == 2 and f"{last}: sha256 does not match" in error_line(err)


@pytest.fixture(scope="module")
def segnet_checkpoint(tmp_path_factory) -> Path:
    """An (untrained) resnet18 DeepLab-v2 checkpoint for 3 foreground classes."""
    from wsss.methods.segnet import build_segnet_from_config, segnet_checkpoint_meta

    cfg = load_config(SMOKE, ["segnet.backbone=resnet18", "segnet.crf=false"])
    names = ["background", "a", "b", "c"]
    model = build_segnet_from_config(cfg.segnet, num_classes=3)
    path = tmp_path_factory.mktemp("segnet") / "model.pt"
    meta = segnet_checkpoint_meta(cfg, "cam_baseline", "make_seeds", names)
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


def _edited(source: Path, folder: Path, edit) -> Path:
    state = load_checkpoint(source)
    edit(state)
    path = folder / "edited.pt"
    save_checkpoint(path, state)
    return path


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda s: s["meta"]["segnet"].update(backbone="resnet34"),
     "checkpoint does not fit the model (another backbone or number of classes?): missing ["),
    (lambda s: s["meta"].update(num_classes=5, class_names=["background", *"abcde"]),
     "shape mismatch ["),
    (lambda s: s.pop("meta"), "checkpoint meta has no class names"),
], ids=["other_backbone", "other_num_classes", "no_meta"])
def test_predict_refuses_a_checkpoint_that_does_not_fit(edit, expected, segnet_checkpoint: Path,
                                                        synthetic_root: Path, tmp_path: Path,
                                                        capsys) -> None:
    path = _edited(segnet_checkpoint, tmp_path, edit)
    code, err = run(capsys, "predict", "--checkpoint", path, "--input",
                    synthetic_root / "JPEGImages" / f"{NAME}.png", "--out", tmp_path / "out",
                    "--device", "cpu")
    assert code == 2 and f"{path}: " in err and expected in error_line(err)
    assert not (tmp_path / "out").exists()


def test_predict_refuses_a_corrupt_checkpoint(segnet_checkpoint: Path, synthetic_root: Path,
                                              tmp_path: Path, capsys) -> None:
    # Copied without any side-car: the digest travels inside the file.
    path = Path(shutil.copy(segnet_checkpoint, tmp_path / "model.pt"))
    assert not (tmp_path / "model.pt.sha256").exists()
    assert load_predictor(path).meta["num_classes"] == 3
    _flip_byte(path)
    code, err = run(capsys, "predict", "--checkpoint", path, "--input", synthetic_root /
                    "JPEGImages", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and f"{path}: sha256 does not match" in error_line(err)


def test_predict_skips_a_bad_image_naming_it(segnet_checkpoint: Path, tmp_path: Path,
                                             capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (40, 32), (90, 20, 200)).save(folder / "good.png")
    (folder / "empty.jpg").write_bytes(b"")
    code, err = run(capsys, "predict", "--checkpoint", segnet_checkpoint, "--input", folder,
                    "--out", tmp_path / "out", "--device", "cpu")
    assert code == 1 and f"wsss: skipped {folder / 'empty.jpg'}: image file is empty" in err
    assert load_mask(tmp_path / "out" / "masks" / "good.png").shape == (32, 40)


# ---------------------------------------------------------------------------------------------
# Disk full, unwritable folders: a one-line error naming the file, no partial file
# ---------------------------------------------------------------------------------------------

def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_names_the_file_and_leaves_no_partial_file(where: str, finished_run,
                                                             capsys, monkeypatch) -> None:
    """ENOSPC on the 5th CAM file from the write itself (half the bytes written), or on the
    resumed training's model.pt from the fsync (a full disk often surfaces only there). The
    error names the output file; the files before it are complete; a rerun resumes."""
    args, run_dir = finished_run
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    seen: list[str] = []
    if where == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, handle) -> None:
                self.handle = handle

            def write(self, data: bytes) -> int:
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                raise enospc

            def __getattr__(self, name: str):
                return getattr(self.handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self.handle.close()

        def fdopen(fd, *fd_args, **kwargs):
            handle = real_fdopen(fd, *fd_args, **kwargs)
            if ".npz." in _fd_path(fd):
                seen.append(_fd_path(fd))
                if len(seen) == 5:
                    return HalfWriter(handle)
            return handle

        monkeypatch.setattr(os, "fdopen", fdopen)
        failed = run_dir / "make_cam" / "cams" / "syn_train_000005.npz"
    else:
        _reopen_training(run_dir)
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if ".tmp-model.pt." in _fd_path(fd):
                raise enospc
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        failed = run_dir / "train_cam" / "model.pt"
    code, err = run(capsys, *args, "--until", "make_cam")
    assert code == 2
    assert error_line(err) == f"wsss: error: {failed}: No space left on device"
    assert partial_files(run_dir) == [] and not failed.exists()
    written = sorted((run_dir / "make_cam" / "cams").glob("*.npz"))
    assert len(written) == (4 if where == "write" else 0)
    for path in written:
        with np.load(path) as data:
            assert data["cams"].shape[0] == data["keys"].shape[0]
    monkeypatch.undo()
    code, err = run(capsys, *args, "--until", "make_cam")
    assert code == 0, err
    assert ("4 of 24 items already done" if where == "write" else "resumed from") in err


def _as_unprivileged(fn) -> int:
    """Run `fn()` in a forked child, as user `nobody` when this is root (root ignores file
    modes); returns its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            torch.set_num_threads(1)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture()
def shared_tmp() -> Path:
    """A folder any user can enter (pytest's tmp_path is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="wsss-reliability-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def _run_to_file(argv: list[str], log: Path):
    def call() -> int:
        import sys

        with log.open("w") as out:
            sys.stderr = out
            return main(argv)

    return call


def test_unwritable_workdir_is_a_one_line_error(synthetic_root: Path, shared_tmp: Path) -> None:
    data = Path(shutil.copytree(synthetic_root, shared_tmp / "data"))
    workdir = shared_tmp / "runs"
    workdir.mkdir(mode=0o500)
    workdir.chmod(0o500)
    log = shared_tmp / "log"
    log.touch(mode=0o666)
    log.chmod(0o666)
    code = _as_unprivileged(_run_to_file(run_args(data, workdir), log))
    err = log.read_text()
    assert code == 2
    assert error_line(err) == f"wsss: error: {workdir / 'smoke'}: Permission denied"


def test_read_only_run_folder_is_a_one_line_error(synthetic_root: Path, shared_tmp: Path,
                                                  capsys) -> None:
    """An existing run folder that became read-only: the first write (config.yaml) fails and
    the error names it, not the temporary file beside it."""
    data = Path(shutil.copytree(synthetic_root, shared_tmp / "data"))
    workdir = shared_tmp / "runs"
    args = run_args(data, workdir)
    code, err = run(capsys, *args, "--until", "data")
    assert code == 0, err
    run_dir = workdir / "smoke"
    if os.geteuid() == 0:
        for path in [shared_tmp, *shared_tmp.rglob("*")]:
            os.chown(path, 65534, 65534)
    run_dir.chmod(0o500)
    log = shared_tmp / "log"
    code = _as_unprivileged(_run_to_file(args, log))
    assert code == 2
    assert error_line(log.read_text()) == (
        f"wsss: error: {run_dir / 'config.yaml'}: Permission denied")
    assert partial_files(run_dir) == []


# ---------------------------------------------------------------------------------------------
# Atomic writes and checkpoints under interruption; determinism
# ---------------------------------------------------------------------------------------------

class Killed(BaseException):
    """Stands in for a process killed midway."""


def test_interrupted_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    write_bytes(path, b"old")
    from wsss.io import atomic_write

    with pytest.raises(Killed), atomic_write(path) as handle:
        handle.write(b"new, half")
        raise Killed
    assert path.read_bytes() == b"old" and partial_files(tmp_path) == []


def test_checkpoint_killed_during_its_write_leaves_the_old_one(tmp_path: Path,
                                                             monkeypatch) -> None:
    """save_checkpoint is one atomic write (the digest is inside the file): a kill during it
    leaves the old checkpoint, which still verifies."""
    import wsss.engine.checkpoint as checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})
    real = checkpoint.write_bytes

    def killed_write(target, data):
        from wsss.io import atomic_write

        with atomic_write(target) as handle:
            handle.write(data[: len(data) // 2])
            raise Killed

    monkeypatch.setattr(checkpoint, "write_bytes", killed_write)
    with pytest.raises(Killed):
        save_checkpoint(path, {"step": torch.tensor(2)})
    assert int(load_checkpoint(path)["step"]) == 1 and partial_files(tmp_path) == []
    monkeypatch.setattr(checkpoint, "write_bytes", real)
    _flip_byte(path)
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_checkpoint(path)


def test_checkpoint_digest_travels_inside_the_file(tmp_path: Path) -> None:
    """A copy without side-car still verifies; a file with no digest at all is refused unless
    allowed; an old checkpoint with a `.sha256` side-car still loads and is checked."""
    import hashlib
    import io as _io

    path = tmp_path / "model.pt"
    save_checkpoint(path, {"w": torch.arange(4)})
    assert not (tmp_path / "model.pt.sha256").exists()
    assert torch.equal(torch.load(path, weights_only=False)["w"], torch.arange(4))  # plain zip
    copy = Path(shutil.copy(path, tmp_path / "copy.pt"))
    assert torch.equal(load_checkpoint(copy)["w"], torch.arange(4))

    buffer = _io.BytesIO()
    torch.save({"w": torch.arange(4)}, buffer)  # an old-style file: no digest inside
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match=r"legacy\.pt: the checkpoint carries no sha256"):
        load_checkpoint(legacy)
    assert torch.equal(load_checkpoint(legacy, allow_unverified=True)["w"], torch.arange(4))
    (tmp_path / "legacy.pt.sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest())
    assert torch.equal(load_checkpoint(legacy)["w"], torch.arange(4))
    _flip_byte(legacy)
    with pytest.raises(CheckpointError, match=r"sha256 does not match legacy\.pt\.sha256"):
        load_checkpoint(legacy)
    # Saving over a legacy checkpoint drops its side-car (the digest is inside now).
    save_checkpoint(legacy, {"w": torch.arange(2)})
    assert not (tmp_path / "legacy.pt.sha256").exists()
    assert torch.equal(load_checkpoint(legacy)["w"], torch.arange(2))


def test_predict_refuses_an_unverifiable_checkpoint_unless_allowed(
        segnet_checkpoint: Path, synthetic_root: Path, tmp_path: Path, capsys) -> None:
    state = torch.load(segnet_checkpoint, weights_only=False)
    path = tmp_path / "foreign.pt"
    torch.save(state, path)  # no digest anywhere (e.g. re-saved by another tool)
    image = synthetic_root / "JPEGImages" / f"{NAME}.png"
    code, err = run(capsys, "predict", "--checkpoint", path, "--input", image, "--out",
                    tmp_path / "out", "--device", "cpu")
    assert code == 2 and "carries no sha256" in error_line(err) and "--allow-unverified" in err
    code, err = run(capsys, "predict", "--checkpoint", path, "--input", image, "--out",
                    tmp_path / "out", "--device", "cpu", "--allow-unverified")
    assert code == 0, err
    assert (tmp_path / "out" / "masks" / f"{NAME}.png").is_file()


@pytest.mark.slow
def test_two_runs_with_the_same_seed_give_identical_masks(synthetic_root: Path, tmp_path: Path,
                                                          capsys) -> None:
    masks = []
    for name in ("a", "b"):
        code, err = run(capsys, *run_args(synthetic_root, tmp_path / name), "--until",
                        "make_seeds")
        assert code == 0, err
        folder = tmp_path / name / "smoke" / "make_seeds" / "masks"
        masks.append({p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))})
    assert len(masks[0]) == 24 and masks[0] == masks[1]


def test_deterministic_sets_the_torch_flags(monkeypatch, capsys) -> None:
    from wsss.cli import build_parser

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        args = build_parser().parse_args(["run", str(SMOKE), "--deterministic"])
        assert args.deterministic is True
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def test_trainer_resume_refuses_a_foreign_model(tmp_path: Path) -> None:
    """Trainer level: another backbone's last.pt names the file and the missing keys."""
    from torch import nn

    def trainer(model: nn.Module) -> Trainer:
        data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(4)]
        def step(m: nn.Module, b: dict) -> dict[str, torch.Tensor]:
            return {"mse": ((m(b["x"]) - b["y"]) ** 2).mean()}

        return Trainer(model=model, step_fn=step,
                       param_groups=[{"params": list(model.parameters()), "lr": 0.1}],
                       dataset=data, out_dir=tmp_path, device=torch.device("cpu"), epochs=1,
                       batch_size=2)

    trainer(nn.Linear(3, 1)).fit()
    with pytest.raises(CheckpointError, match=r"last\.pt: checkpoint does not fit the model.*"
                                              r"missing \['0\.bias', '0\.weight'\]"):
        trainer(nn.Sequential(nn.Linear(3, 1))).fit()
