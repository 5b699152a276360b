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
    ("model.backbone=resnet5", "model.backbone", "one of resnet101, resnet101_caffe, resnet18"),
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


# ---------------------------------------------------------------------------------------------
# Item 14: messages that name the real problem
# ---------------------------------------------------------------------------------------------

def make_root(root: Path, names: list[str], *, size: tuple[int, int] = (16, 12)) -> Path:
    """A VOC-layout root: RGB PNG images, masks of class 1 on the left half, `train.txt`."""
    width, height = size
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.png")
        mask = np.zeros((height, width), np.uint8)
        mask[:, : width // 2] = 1
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names) + "\n")
    return root


def data_stage(capsys, root: Path, workdir: Path, *extra: str) -> tuple[int, str]:
    """`wsss run` of the data stage alone on a custom root whose every split is `train`."""
    code, _, err = run(capsys, "run", SMOKE, "--workdir", workdir, "--device", "cpu",
                       "--until", "data", "--set", "data.dataset=custom", f"data.root={root}",
                       "data.train_split=train", "data.infer_split=train",
                       "data.eval_split=train", "data.val_split=train", *extra)
    return code, err


def test_eval_names_a_missing_folder_and_a_cam_folder(tmp_path: Path, capsys) -> None:
    from wsss.io import save_cams

    root = make_root(tmp_path / "d", ["a", "b"])
    base = ("eval", "--data", root, "--split", "train", "--no-contour")
    code, _, err = run(capsys, *base, "--pred", tmp_path / "nowhere")
    assert code == 2 and f"prediction folder not found: {tmp_path / 'nowhere'}" in error_line(err)
    cams = tmp_path / "cams"
    for name in ("a", "b"):
        save_cams(cams / f"{name}.npz", np.full((1, 12, 16), 0.5, np.float32), np.array([1]))
    code, _, err = run(capsys, *base, "--pred", cams)
    assert code == 2 and "holds CAM .npz files: add --cams" in error_line(err)
    code, out, err = run(capsys, *base, "--pred", cams, "--cams")
    assert code == 0, err


def test_eval_names_the_file_with_an_out_of_range_value(tmp_path: Path, capsys) -> None:
    from wsss.io import save_mask

    root = make_root(tmp_path / "d", ["a", "b"])
    pred = tmp_path / "pred"
    save_mask(pred / "a.png", np.ones((12, 16), np.uint8))
    save_mask(pred / "b.png", np.full((12, 16), 40, np.uint8))  # VOC has 20 classes
    code, _, err = run(capsys, "eval", "--data", root, "--split", "train", "--pred", pred)
    assert code == 2 and f"{pred / 'b.png'}: predicted values [40] outside 0..20" in \
        error_line(err)


def test_exif_rotation_is_named_in_a_size_mismatch(tmp_path: Path, capsys) -> None:
    root = make_root(tmp_path / "d", ["a", "b"])
    image = Image.open(root / "JPEGImages" / "b.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    (root / "JPEGImages" / "b.png").unlink()
    image.save(root / "JPEGImages" / "b.jpg", exif=exif)
    code, err = data_stage(capsys, root, tmp_path / "runs")
    assert code == 2 and "mask is 16x12 but image" in err
    assert "after its EXIF orientation 6" in err and "rotate the mask" in err


def test_a_utf8_bom_label_csv_is_read(tmp_path: Path, capsys) -> None:
    root = make_root(tmp_path / "d", ["a", "b"])
    (root / "labels.csv").write_bytes("name,labels\na,aeroplane\nb,aeroplane\n"
                                      .encode("utf-8-sig"))
    code, err = data_stage(capsys, root, tmp_path / "runs", "data.labels_from=csv")
    assert code == 0, err


def test_a_latin1_split_list_names_the_file_and_line(tmp_path: Path, capsys) -> None:
    root = make_root(tmp_path / "d", ["a", "b"])
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_bytes("a\ncaf\u00e9\n".encode("latin-1"))
    code, err = data_stage(capsys, root, tmp_path / "runs")
    assert code == 2 and f"{split} line 2: split list is not UTF-8 text" in error_line(err)


def test_split_names_with_spaces_are_kept_whole(tmp_path: Path, capsys) -> None:
    root = make_root(tmp_path / "d", ["my photo", "b"])
    code, err = data_stage(capsys, root, tmp_path / "runs")
    assert code == 0, err
    from wsss.data.voc import read_name_list

    assert read_name_list(root / "ImageSets" / "Segmentation" / "train.txt") == ["my photo", "b"]
    pairs = tmp_path / "pairs.txt"  # 1-Stage style lines still give the image name
    pairs.write_text("/JPEGImages/x_1.jpg /SegmentationClassAug/x_1.png\n")
    assert read_name_list(pairs) == ["x_1"]


def test_a_name_listed_twice_in_a_split_is_refused(tmp_path: Path, capsys) -> None:
    root = make_root(tmp_path / "d", ["a", "b"])
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("a\nb\na\n")
    code, err = data_stage(capsys, root, tmp_path / "runs")
    assert code == 2 and f"{split} line 3: image 'a' is listed twice (first on line 1)" in \
        error_line(err)


# ---------------------------------------------------------------------------------------------
# Items 7, 8, 13: `wsss predict` on real folders (16-bit images, huge images, name clashes)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segnet_checkpoint(tmp_path_factory) -> Path:
    """An (untrained) resnet18 DeepLab-v2 checkpoint for 3 foreground classes, no CRF."""
    from wsss.config import load_config
    from wsss.engine.checkpoint import save_checkpoint
    from wsss.methods.segnet import build_segnet_from_config, segnet_checkpoint_meta

    cfg = load_config(SMOKE, ["segnet.backbone=resnet18", "segnet.crf=false"])
    model = build_segnet_from_config(cfg.segnet, num_classes=3)
    path = tmp_path_factory.mktemp("segnet") / "model.pt"
    meta = segnet_checkpoint_meta(cfg, "cam_baseline", "make_seeds", ["background", *"abc"])
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


def gray16(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"


def test_16bit_grayscale_is_scaled_not_white(tmp_path: Path, segnet_checkpoint: Path,
                                             capsys) -> None:
    from wsss.io import load_image
    from wsss.predict import overlay

    values = np.tile(np.linspace(0, 65535, 40), (32, 1)).round()
    gray16(tmp_path / "in.png", values)
    expected = np.round(values / 257).astype(np.uint8)
    image = load_image(tmp_path / "in.png")  # what training and the data stage read
    assert np.array_equal(image, np.repeat(expected[:, :, None], 3, axis=2))
    code, _, err = run(capsys, "predict", "--checkpoint", segnet_checkpoint, "--input",
                       tmp_path / "in.png", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "in.png"))
    shown = np.asarray(Image.open(tmp_path / "out" / "overlays" / "in.png").convert("RGB"))
    assert np.array_equal(shown, overlay(np.repeat(expected[:, :, None], 3, axis=2), mask))


def test_predict_bounds_memory_by_max_side_and_refuses_what_cannot_fit(
        tmp_path: Path, segnet_checkpoint: Path, capsys) -> None:
    """A 3000x2000 JPEG at --max-side 64: decoded reduced, scored at 64 px, only the argmax
    upsampled: NumPy never holds a full-size RGB image or score array (one mask byte per
    pixel, at most twice). An image over --max-pixels is named and skipped; the others are
    written, and the exit code says some were skipped."""
    import tracemalloc

    folder = tmp_path / "in"
    folder.mkdir()
    width, height = 3000, 2000
    big = np.zeros((height, width, 3), np.uint8)
    big[:, : width // 2] = (200, 30, 30)
    Image.fromarray(big).save(folder / "big.jpg", quality=80)
    del big
    Image.new("RGB", (40, 30), (0, 90, 200)).save(folder / "small.png")
    def traced_peak(inputs: list[Path], out: Path) -> int:
        tracemalloc.start()
        try:
            code, _, err = run(capsys, "predict", "--checkpoint", segnet_checkpoint, "--input",
                               *inputs, "--out", out, "--device", "cpu", "--max-side", 64)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert code == 0, err
        return peak

    baseline = traced_peak([folder / "small.png"], tmp_path / "out0")  # reading the checkpoint
    extra = traced_peak([folder], tmp_path / "out") - baseline
    assert extra < 2.5 * width * height, extra  # a full RGB image alone is 3 bytes per pixel
    masks = tmp_path / "out" / "masks"
    assert np.asarray(Image.open(masks / "big.png")).shape == (height, width)
    assert np.asarray(Image.open(masks / "small.png")).shape == (30, 40)
    with Image.open(tmp_path / "out" / "overlays" / "big.png") as shown:
        assert max(shown.size) == 64
    code, _, err = run(capsys, "predict", "--checkpoint", segnet_checkpoint, "--input",
                       folder, "--out", tmp_path / "out2", "--device", "cpu",
                       "--max-pixels", 100_000)
    assert code == 1
    assert f"wsss: skipped {folder / 'big.jpg'}: image is 3000x2000 (6 megapixels), above " \
           "--max-pixels 100000" in err
    assert sorted(p.name for p in (tmp_path / "out2" / "masks").iterdir()) == ["small.png"]


def test_predict_maps_clashing_names_and_reports_skips(tmp_path: Path, segnet_checkpoint: Path,
                                                       capsys) -> None:
    import csv

    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    for path in (d1 / "a.jpg", d1 / "a.png", d2 / "a.jpg"):
        Image.new("RGB", (24, 16), (120, 40, 10)).save(path)
    (d1 / "notes.txt").write_text("not an image")
    (d2 / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "predict", "--checkpoint", segnet_checkpoint, "--input", d1,
                            d2, "--out", out, "--device", "cpu")
    assert code == 1  # documented: some images skipped, the others written
    assert "skipped 1 files that are not images" in err and "notes.txt" in err
    assert f"wsss: skipped {d2 / 'broken.png'}: unreadable" in err
    assert "3 inputs share a file name" in stdout
    rows = list(csv.DictReader((out / "mapping.csv").open()))
    by_input = {r["input"]: r for r in rows}
    written = [by_input[str(p)]["mask"] for p in (d1 / "a.jpg", d1 / "a.png", d2 / "a.jpg")]
    assert len(set(written)) == 3 and all(Path(m).is_file() for m in written)
    assert by_input[str(d2 / "broken.png")]["status"].startswith("failed: ")


# ---------------------------------------------------------------------------------------------
# Item 15: progress bars only on a terminal; every run writes <run>/log.txt
# ---------------------------------------------------------------------------------------------

def test_no_bars_off_a_terminal_and_a_run_log(tmp_path: Path, synthetic_root: Path,
                                              capsys) -> None:
    code, out, err = run(capsys, "run", SMOKE, "--workdir", tmp_path / "runs", "--device", "cpu",
                         "--until", "make_cam", "--set", f"data.root={synthetic_root}",
                         "pipeline.tensorboard=false", "pipeline.report=false",
                         "method.cam_flip=false")
    assert code == 0, err
    assert "\r" not in err  # stderr is not a terminal here: no bar frames
    assert "epoch 1/1" in err  # a line per epoch instead
    log_text = (tmp_path / "runs" / "smoke" / "log.txt").read_text()
    assert "\r" not in log_text
    for line in ("stage train_cam", "stage make_cam", "epoch 1/1", "run directory:"):
        assert line in log_text, line
    # A failing rerun appends its error line to the same log.
    code, _, err = run(capsys, "run", SMOKE, "--workdir", tmp_path / "runs", "--device", "cpu",
                       "--set", "data.dataset=custom", f"data.root={tmp_path / 'nowhere'}")
    assert code == 2
    assert error_line(err) in (tmp_path / "runs" / "smoke" / "log.txt").read_text()


class _Terminal:
    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(("env", "bars"), [(None, True), ("1", False), ("true", False),
                                           ("0", True)])
def test_tqdm_disable_is_respected(env: str | None, bars: bool, monkeypatch) -> None:
    from wsss.logs import LineProgress, progress

    monkeypatch.setattr("sys.stderr", _Terminal())
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    bar = progress(range(3), desc="x")
    assert list(bar) == [0, 1, 2]
    assert isinstance(bar, LineProgress) != bars


# ---------------------------------------------------------------------------------------------
# Item 16: checkpoint cadence by steps or time (an epoch of one step writes no checkpoint per
# step); lazy imports (`wsss list` imports no torchvision or scipy)
# ---------------------------------------------------------------------------------------------

def _count_saves(tmp_path: Path, monkeypatch, **kw) -> int:
    import torch
    from torch import nn

    import wsss.engine.trainer as trainer_module
    from wsss.engine.trainer import Trainer

    class Toy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> dict:
            x = torch.randn(4)
            return {"x": x, "y": x.sum().reshape(1)}

    saves = {"n": 0}
    real = trainer_module.save_checkpoint

    def counted(path, state):
        saves["n"] += 1
        real(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", counted)
    model = nn.Linear(4, 1)
    Trainer(model=model, step_fn=lambda m, b: {"mse": ((m(b["x"]) - b["y"]) ** 2).mean()},
            param_groups=[{"params": model.parameters(), "lr": 0.01}], dataset=Toy(),
            out_dir=tmp_path, device=torch.device("cpu"), epochs=1, batch_size=4,
            **kw).fit()
    return saves["n"]


def test_one_step_epochs_do_not_checkpoint_every_step(tmp_path: Path, monkeypatch) -> None:
    # The segnet's iteration budget over a 4-image set: 12 epochs of one step each.
    segnet = dict(max_steps=12, checkpoint_epochs=False)
    assert _count_saves(tmp_path / "a", monkeypatch, **segnet) == 1  # the final state only
    assert _count_saves(tmp_path / "b", monkeypatch, checkpoint_every=5, **segnet) == 3  # 5, 10, 12
    assert _count_saves(tmp_path / "c", monkeypatch, checkpoint_seconds=1e-9, **segnet) == 12
    assert _count_saves(tmp_path / "d", monkeypatch, max_steps=12) == 12  # per epoch (CAM nets)


def test_wsss_list_imports_neither_torchvision_nor_scipy(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .conftest import ROOT

    code = ("import sys; from wsss.cli import main; main(['list']); "
            "print(sorted(m for m in ('torchvision', 'scipy', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_fully_skipped_rerun_keeps_the_report(tmp_path: Path, synthetic_root: Path,
                                                capsys) -> None:
    args = ["run", SMOKE, "--workdir", tmp_path / "runs", "--device", "cpu", "--until", "data",
            "--set", f"data.root={synthetic_root}", "pipeline.tensorboard=false"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    report = tmp_path / "runs" / "smoke" / "report" / "index.html"
    written = report.stat().st_mtime_ns
    code, out, err = run(capsys, *args)
    assert code == 0 and "(no stage ran; unchanged)" in out
    assert report.stat().st_mtime_ns == written
    code, out, err = run(capsys, *args, "--set", "pipeline.tensorboard_images=4")  # config
    assert code == 0 and "unchanged" not in out and report.stat().st_mtime_ns != written
