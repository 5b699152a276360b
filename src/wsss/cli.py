"""`wsss` command line: each subcommand parses, loads the config, calls one library function."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("wsss")


def _setup_logging(verbose: bool = False) -> None:
    from wsss.engine import distributed as dist

    logger = logging.getLogger("wsss")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if dist.is_main():  # only rank 0 logs
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """`--set` pairs (several per flag) plus the pipeline flags of `run` / `pretrain`, as dotted
    overrides."""
    overrides = [pair for group in args.set or [] for pair in group]
    if args.workdir:
        overrides.append(f"pipeline.workdir={args.workdir}")
    if args.device:
        overrides.append(f"pipeline.device={args.device}")
    if getattr(args, "workers", None) is not None:
        overrides.append(f"pipeline.workers={args.workers}")
    if getattr(args, "deterministic", None) is not None:
        overrides.append(f"pipeline.deterministic={str(args.deterministic).lower()}")
    return overrides


def _cmd_run(args: argparse.Namespace) -> int:
    from wsss.config import check_device, find_preset, load_config
    from wsss.pipeline.artifacts import run_lock
    from wsss.pipeline.report import results_table
    from wsss.pipeline.runner import format_resources, run_pipeline

    cfg = load_config(find_preset(args.config), _run_overrides(args))
    check_device(cfg.pipeline.device)
    from wsss.engine import distributed as dist

    # One process holds the run directory's lock over the run and the report; under torchrun
    # the runner takes it on rank 0 (and tells the other ranks when it cannot).
    single = os.environ.get("WORLD_SIZE", "1") == "1"
    run_dir = Path(cfg.pipeline.workdir) / cfg.pipeline.name
    with run_lock(run_dir, wait=args.wait) if single else contextlib.nullcontext():
        result = run_pipeline(cfg, start=args.start, until=args.until, only=args.only or (),
                              force=args.force or (), wait=args.wait)
        if dist.is_main():
            with run_lock(result.run_dir, wait=args.wait):  # no other run rewrites it meanwhile
                from wsss.logs import log_to_run_file

                summary = (f"{results_table(result.run_dir)}\n\n"
                           f"{format_resources(result.outcomes)}\n\n"
                           f"run directory: {result.run_dir}")
                print(summary)
                log_to_run_file(summary)
                if cfg.pipeline.report:
                    _write_run_report(result)
    return 0


def _write_run_report(result: Any) -> None:
    """`wsss run`'s report: kept when nothing it shows changed (`_report_is_current`)."""
    report = result.run_dir / "report" / "index.html"
    if _report_is_current(result, report):
        print(f"report: {report} (no stage ran; unchanged)")
        return
    from wsss.io import write_text
    from wsss.report import write_report

    print(f"report: {write_report(result.run_dir)}")
    write_text(report.parent / REPORT_MARK, _config_digest(result.run_dir))


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from wsss.config import find_preset, load_config
    from wsss.engine import distributed as dist
    from wsss.pipeline.artifacts import run_lock
    from wsss.pipeline.runner import format_resources, run_pipeline

    cfg = load_config(find_preset(args.config or PRETRAIN_PRESET), _run_overrides(args))
    if cfg.method.name != "pretrain":
        raise ValueError(f"{args.config}: method.name is {cfg.method.name!r}; "
                         "`wsss pretrain` runs a preset of the `pretrain` method")
    single = os.environ.get("WORLD_SIZE", "1") == "1"
    with run_lock(Path(cfg.pipeline.workdir) / cfg.pipeline.name) if single \
            else contextlib.nullcontext():
        result = run_pipeline(cfg)
    if not dist.is_main():
        return 0
    scores = result.summary("eval_pretrain")
    export = result.summary("export")
    print(f"held-out corpus ({scores['images']} scenes): exact-match accuracy "
          f"{100 * scores['exact_match']:.1f} %, mAP {100 * scores['mAP']:.1f} %, top-1 "
          f"precision {100 * scores['top1_precision']:.1f} %")
    print(f"weights: {export['file']} ({export['megabytes']} MB, sha256 {export['sha256']})")
    print()
    print(format_resources(result.outcomes))
    if args.install:
        from wsss.weights import install_weights

        command = " ".join(["wsss pretrain", *(f"--set {' '.join(g)}" for g in args.set or [])])
        target = install_weights(Path(export["file"]), cfg.model.backbone, {
            "command": command, "preset": args.config or PRETRAIN_PRESET,
            "held_out_scores": scores, "seed": cfg.pipeline.seed,
        })
        print(f"installed: {target} (model.pretrained: synthetic)")
    return 0


# The preset `wsss pretrain` runs when no config is given (the shipped weights' recipe).
PRETRAIN_PRESET = "pretrain/synthetic"


# Written beside the report by `wsss run` (not by `wsss report`, whose options may differ):
# the sha256 of the config.yaml the report was made from.
REPORT_MARK = ".run-config.sha256"


def _config_digest(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()


def _report_is_current(result: Any, report: Path) -> bool:
    """True when a rerun changed nothing the report shows: every stage was skipped, `wsss run`
    wrote the report from this very config, and the report is newer than every manifest (a
    fully skipped rerun then spends no seconds on plots)."""
    mark = report.parent / REPORT_MARK
    if not report.is_file() or not mark.is_file() or not result.outcomes:
        return False
    if any(o.status != "skipped" for o in result.outcomes):
        return False
    if mark.read_text().strip() != _config_digest(result.run_dir):
        return False
    written = report.stat().st_mtime
    return all(m.stat().st_mtime <= written for m in result.run_dir.glob("*/manifest.json"))


def _cmd_report(args: argparse.Namespace) -> int:
    from wsss.report import write_report

    (Path(args.run_dir) / "report" / REPORT_MARK).unlink(missing_ok=True)  # options may differ
    print(f"wrote {write_report(args.run_dir, max_images=args.max_images)}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from wsss.report import compare_runs

    out = args.out or Path(args.runs[0]).parent / "compare"
    comparison = compare_runs(args.runs, out)
    for note in comparison.notes:
        print(f"note: {note}")
    print(comparison.table())
    print(f"\nwrote {comparison.html_path}")
    return 0


def _dataset_from_args(args: argparse.Namespace) -> Any:
    from wsss.config import DataConfig
    from wsss.data import build_dataset

    cfg = DataConfig(dataset="custom", root=args.data, mask_dir=args.mask_dir)
    return build_dataset(cfg, args.split)


def _cmd_eval(args: argparse.Namespace) -> int:
    from wsss.evaluation import evaluate_cams, evaluate_masks, write_result
    from wsss.pipeline.report import format_eval

    dataset = _dataset_from_args(args)
    if args.cams:
        thresholds = np.round(np.arange(0.0, 1.0, args.sweep_step), 6)
        result = evaluate_cams(args.pred, dataset, threshold=args.threshold,
                               thresholds=thresholds, absent=args.absent)
    else:
        result = evaluate_masks(args.pred, dataset, absent=args.absent, contour=args.contour)
    result["split"] = args.split
    print(format_eval(result, dataset.class_names))
    if args.out:
        write_result(args.out, result)
        if args.cams:
            from wsss.methods.base import _plot_cam_eval

            _plot_cam_eval(result, Path(args.out), label=Path(args.pred).name)
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    args.cams = True
    return _cmd_eval(args)


def _cmd_list(args: argparse.Namespace) -> int:
    from wsss.config import load_config
    from wsss.data import DATASETS
    from wsss.methods import METHODS, build_method
    from wsss.models.backbones import BACKBONES

    print("methods:   " + ", ".join(METHODS.names()))
    print("backbones: " + ", ".join(BACKBONES.names()))
    print("datasets:  " + ", ".join(DATASETS.names()))
    from wsss.config import list_presets

    presets = list_presets()
    if presets:
        print("presets:   " + ", ".join(presets) + "  (wsss run NAME)")
    for name in METHODS.names():
        stages = build_method(load_config(None, [f"method.name={name}"])).stages()
        print(f"stages of {name}: " + " → ".join(s.name for s in stages))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """Exit codes: 0 every image written; 1 some images failed (each named on stderr and in
    OUT/mapping.csv), the others written; 2 nothing done (bad argument, checkpoint or input)."""
    import csv

    from PIL import Image

    from wsss.config import check_device
    from wsss.engine import distributed as dist
    from wsss.io import IMAGE_EXTENSIONS, DataError, save_mask, write_bytes, write_text
    from wsss.pipeline.runner import resolve_device
    from wsss.predict import load, output_names, overlay, scan_inputs

    check_device(args.device, "--device")
    device = resolve_device(args.device)
    dist.init_from_env(device)  # under torchrun, each rank predicts every N-th image
    files, not_images = scan_inputs(args.input)
    predictor = load(args.checkpoint, device=device, scales=args.scales,
                     flip=args.flip, crf=args.crf, max_side=args.max_side,
                     allow_unverified=args.allow_unverified)
    names = output_names(files)
    pairs = dist.shard(list(zip(files, names)))
    out = Path(args.out)
    failed: list[str] = []
    rows: list[tuple[str, str, str, str]] = []
    for path, name in pairs:
        mask_path, overlay_path = out / "masks" / f"{name}.png", out / "overlays" / f"{name}.png"
        try:
            mask, work, work_mask = predictor.predict_file(path, max_pixels=args.max_pixels)
        except DataError as exc:
            failed.append(str(exc))
            rows.append((str(path), "", "", f"failed: {exc}"))
            continue
        except (MemoryError, RuntimeError) as exc:  # torch reports out of memory as RuntimeError
            if isinstance(exc, RuntimeError) and "out of memory" not in str(exc).lower():
                raise
            message = f"{path}: out of memory at --max-side {args.max_side}; lower it"
            failed.append(message)
            rows.append((str(path), "", "", f"failed: {message}"))
            continue
        save_mask(mask_path, mask)
        buffer = io.BytesIO()
        Image.fromarray(overlay(work, work_mask)).save(buffer, format="PNG")
        write_bytes(overlay_path, buffer.getvalue())
        rows.append((str(path), str(mask_path), str(overlay_path), "written"))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["input", "mask", "overlay", "status"])
    writer.writerows(rows)
    mapping = out / ("mapping.csv" if dist.world_size() == 1 else f"mapping_rank{dist.rank()}.csv")
    write_text(mapping, table.getvalue())
    renamed = sum(1 for f, n in zip(files, names) if f.stem != n)
    print(f"wrote {len(pairs) - len(failed)} masks to {out / 'masks'} and overlays to "
          f"{out / 'overlays'}; input → output in {mapping}")
    if renamed:
        print(f"note: {renamed} inputs share a file name with another input; their outputs are "
              f"named <stem>_<ext>[_N] (see {mapping.name})")
    if not_images:
        shown = ", ".join(p.name for p in not_images[:5])
        more = f" and {len(not_images) - 5} more" if len(not_images) > 5 else ""
        print(f"wsss: skipped {len(not_images)} files that are not images "
              f"(extension not in {' '.join(IMAGE_EXTENSIONS)}): {shown}{more}", file=sys.stderr)
    for message in failed:
        print(f"wsss: skipped {message}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from wsss.data.synthetic import generate, save_sample_grid

    root = generate(args.out, num_train=args.num_train, num_val=args.num_val,
                    image_size=args.image_size, seed=args.seed)
    if args.grid:
        save_sample_grid(root, args.grid)
    print(f"wrote synthetic data to {root}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        return _cmd_synth(args)
    if args.data_command == "sbd":
        from wsss.data.sbd import convert_sbd

        print(json.dumps(convert_sbd(args.sbd, args.voc), indent=2, default=str))
        return 0
    from wsss.data.coco import convert_coco

    print(json.dumps(convert_coco(args.coco, args.out, limit=args.limit), indent=2, default=str))
    return 0


def _add_synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output root (VOC layout)")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default=None, help="also write a sample grid PNG here")


def _add_eval_args(p: argparse.ArgumentParser, cams_default: bool) -> None:
    p.add_argument("--pred", required=True, help="folder of <name>.png masks or <name>.npz CAMs")
    p.add_argument("--data", required=True, help="dataset root (VOC layout)")
    p.add_argument("--split", required=True, help="split name, e.g. train or val")
    p.add_argument("--mask-dir", default="SegmentationClass", help="ground-truth mask folder")
    if not cams_default:
        p.add_argument("--cams", action=argparse.BooleanOptionalAction, default=False,
                       help="--pred holds CAM .npz files (fixed threshold + sweep)")
    p.add_argument("--threshold", type=float, default=0.15,
                   help="fixed background threshold for CAMs (IRN 0.15)")
    p.add_argument("--sweep-step", type=float, default=0.01)
    p.add_argument("--absent", choices=["nan", "zero"], default="nan",
                   help="absent classes: excluded (nan) or counted as 0")
    p.add_argument("--contour", action=argparse.BooleanOptionalAction, default=True,
                   help="also compute the contour F-score (masks only)")
    p.add_argument("--out", default=None, help="folder for metrics.json and plots")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsss", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a config's pipeline (skips finished stages, resumes)")
    p.add_argument("config", help="a preset name as `wsss list` shows it (synthetic/demo) or a "
                                  "YAML file")
    p.add_argument("--set", action="append", nargs="+", metavar="KEY=VALUE",
                   help="override config keys: one or more KEY=VALUE pairs per --set, and the "
                        "flag may repeat (put CONFIG before --set)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="rerun from this stage on")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument("--only", action="append", metavar="STAGE", help="run only this stage")
    p.add_argument("--force", action="append", metavar="STAGE", help="rerun this stage")
    p.add_argument("--workdir", help="parent folder of run directories (pipeline.workdir)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (pipeline.device)")
    p.add_argument("--workers", type=int, help="process pool for CPU-bound per-image work")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="deterministic torch kernels (pipeline.deterministic)")
    p.add_argument("--wait", action="store_true",
                   help="when another run holds the run directory, wait for it (default: stop)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("pretrain", help="pretrain a backbone on the procedural corpus "
                       "(the weights behind model.pretrained: synthetic)")
    p.add_argument("--config", help="a `pretrain` preset (default: pretrain/synthetic)")
    p.add_argument("--set", action="append", nargs="+", metavar="KEY=VALUE",
                   help="override config keys: one or more KEY=VALUE pairs per --set")
    p.add_argument("--workdir", help="parent folder of run directories (pipeline.workdir)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (pipeline.device)")
    p.add_argument("--install", action="store_true",
                   help="copy the exported weights into the package (wsss/weights/) and index them")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("eval", help="score a folder of masks (or CAMs) against ground truth")
    _add_eval_args(p, cams_default=False)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sweep", help="mIoU over background thresholds for a folder of CAMs")
    _add_eval_args(p, cams_default=True)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="write RUN_DIR/report/index.html (tables, plots, gallery)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/demo")
    p.add_argument("--max-images", type=int, default=24, help="gallery rows per split")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="one table and one set of curves over several runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories on the same data")
    p.add_argument("--out", default=None,
                   help="output folder (default: compare/ beside the first run)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("list", help="list methods, backbones, datasets, presets and stages")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("predict", help="segment arbitrary images with a trained checkpoint",
                       epilog="exit codes: 0 every image written; 1 some images skipped (each "
                              "named on stderr and in OUT/mapping.csv), the others written; 2 "
                              "nothing done (bad argument, checkpoint or input)")
    p.add_argument("--checkpoint", required=True,
                   help="model.pt of train_segnet (or another predicting checkpoint)")
    p.add_argument("--input", required=True, nargs="+", metavar="DIR_OR_FILE",
                   help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="writes OUT/masks/*.png and OUT/overlays/*.png")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                   help="dense CRF (default: the checkpoint's test setting)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="test scales (default: the checkpoint's)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="also score the mirrored image (default: the checkpoint's)")
    p.add_argument("--max-side", type=int, default=1024,
                   help="decode and score larger images at this longer side; the mask is "
                        "upsampled (nearest) to the input size, overlays stay at this size")
    p.add_argument("--max-pixels", type=int, default=250_000_000,
                   help="refuse (skip, naming it) an image with more pixels than this")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--allow-unverified", action="store_true",
                   help="load a checkpoint that carries no sha256 (e.g. re-saved elsewhere)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("synth", help="write the synthetic data set (same as `data synth`)")
    _add_synth_args(p)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("data", help="prepare data sets: synth, sbd, coco")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    q = data_sub.add_parser("synth", help="write the synthetic data set")
    _add_synth_args(q)
    q = data_sub.add_parser("sbd", help="convert SBD cls/*.mat to SegmentationClassAug + train_aug")
    q.add_argument("--sbd", required=True, help="SBD root (holds dataset/cls)")
    q.add_argument("--voc", required=True, help="VOC2012 root")
    q = data_sub.add_parser("coco", help="rasterise COCO 2014 instances into semantic PNGs")
    q.add_argument("--coco", required=True, help="COCO root (annotations/, train2014/, val2014/)")
    q.add_argument("--out", required=True, help="output root")
    q.add_argument("--limit", type=int, default=None, help="convert only the first N images")
    p.set_defaults(func=_cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from wsss.config import ConfigError
    from wsss.engine.checkpoint import CheckpointError
    from wsss.engine.trainer import TrainingError
    from wsss.io import DataError
    from wsss.pipeline.artifacts import ManifestError, PipelineError, RunInterrupted

    from wsss.logs import detach_run_log, log_to_run_file

    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, ManifestError, PipelineError,
            TrainingError, OSError, ValueError, KeyError) as exc:
        _close_progress_bars()
        print(f"wsss: error: {_one_line(exc)}", file=sys.stderr)
        log_to_run_file(f"wsss: error: {_one_line(exc)}", level=logging.ERROR)
        return 2
    except KeyboardInterrupt as exc:
        _close_progress_bars()
        message = str(exc) if isinstance(exc, RunInterrupted) else (
            "interrupted; rerun the same command to go on (finished work is kept)")
        print(f"\nwsss: {message}", file=sys.stderr)
        log_to_run_file(f"wsss: {message}", level=logging.ERROR)
        return 130
    finally:
        detach_run_log()


def _close_progress_bars() -> None:
    """Clear the progress bars an error interrupted, so the message gets a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line(exc: BaseException) -> str:
    """The user-facing message of an expected error: the file first for OS errors (disk full,
    permission denied), the key for a KeyError."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
