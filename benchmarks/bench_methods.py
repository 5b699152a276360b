"""Method benchmark: the CAM baseline and every method's synthetic preset over several seeds,
from the shared pretrained start (`model.pretrained: synthetic`), plus the ablations behind each
paper's central claim. Writes a markdown table (mean ± sd over seeds) and a plot.

    python benchmarks/bench_methods.py [--seeds 0 1 2] [--workdir runs/bench-methods]
        [--only cam amn ...] [--data-root DIR] [--out docs/benchmarks/methods.md] [--list]

Every (variant, seed) is one `wsss run` in its own run directory under --workdir, so a rerun
skips what has finished (the pipeline's manifests) and resumes what was cut off. --data-root
runs every preset unchanged on another VOC-layout folder (`--set data.root=DIR`). Columns:
the CAM at its fixed threshold, the method's intermediate and final pseudo-masks (train split,
fixed thresholds), their coverage and contour F, and, for the main rows, the DeepLab val mIoU of
the synthetic segnet recipe (configs/synthetic/segnet.yaml) trained on the final masks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """One benchmarked configuration: a preset plus overrides, and which eval stages to read."""

    key: str                 # run-directory stem and --only name
    group: str               # the method it belongs to (one plot panel, one table block)
    label: str
    preset: str
    cam: str                 # eval stage of the CAM (fixed threshold)
    intermediate: str | None
    final: str
    overrides: tuple[str, ...] = ()
    segnet: bool = False     # train the final DeepLab on `final`'s masks (main rows)


VARIANTS: tuple[Variant, ...] = (
    Variant("cam", "cam", "CAM baseline (CAM → CRF seeds)", "synthetic/cam_baseline",
            "eval_cam", None, "eval_seeds", segnet=True),
    Variant("amn", "amn", "AMN + IRN (full)", "synthetic/amn", "eval_cam", "eval_amn_cam",
            "eval_pseudo_masks", segnet=True),
    Variant("amn_pcl", "amn", "AMN: +PCL, no LC", "synthetic/amn", "eval_cam", "eval_amn_cam",
            "eval_amn_seeds", overrides=("method.lc_layer=null",)),
    Variant("icam", "icam", "ICAM + AffinityNet (λ 0.8, FSL)", "synthetic/icam", "eval_cam",
            "eval_cam_masks", "eval_aff_masks", overrides=("method.affinitynet_refine=true",),
            segnet=True),
    Variant("icam_l0", "icam", "ICAM: λ 0 (no sampling)", "synthetic/icam", "eval_cam",
            "eval_cam_masks", "eval_cam_masks", overrides=("method.sampling_weight=0",)),
    Variant("icam_nofsl", "icam", "ICAM: no FSL", "synthetic/icam", "eval_cam",
            "eval_cam_masks", "eval_cam_masks", overrides=("method.fsl_weight=0",)),
    Variant("psa", "psa", "CAM + AffinityNet (PSA)", "synthetic/cam_affinitynet", "eval_cam",
            "eval_aff_labels", "eval_aff_masks"),
    Variant("one_stage", "one_stage", "1-Stage (clean masks, + CRF)", "synthetic/one_stage",
            "eval_cam", "eval_masks", "eval_crf", segnet=True),
    Variant("one_stage_nopamr", "one_stage", "1-Stage: PAMR off", "synthetic/one_stage",
            "eval_cam", "eval_masks", "eval_crf", overrides=("method.pamr=false",)),
    Variant("one_stage_nofocal", "one_stage", "1-Stage: no focal mask penalty",
            "synthetic/one_stage", "eval_cam", "eval_masks", "eval_crf",
            overrides=("method.focal=false",)),
    Variant("aux_st", "auxsegnet", "AuxSegNet: single task", "synthetic/auxsegnet", "eval_cam",
            "eval_labels_round0", "eval_labels_round1",
            overrides=("method.multi_task=false", "method.affinity=none", "method.num_rounds=1")),
    Variant("aux_mt", "auxsegnet", "AuxSegNet: +MT", "synthetic/auxsegnet", "eval_cam",
            "eval_labels_round0", "eval_labels_round1",
            overrides=("method.affinity=none", "method.num_rounds=1")),
    Variant("aux_ct", "auxsegnet", "AuxSegNet: +MT +CT", "synthetic/auxsegnet", "eval_cam",
            "eval_labels_round0", "eval_labels_round1", overrides=("method.num_rounds=1",)),
    Variant("aux", "auxsegnet", "AuxSegNet: +MT +CT +IL (full)", "synthetic/auxsegnet",
            "eval_cam", "eval_labels_round0", "eval_labels_round4", segnet=True),
)


def segnet_overrides() -> list[str]:
    """The synthetic segnet recipe (configs/synthetic/segnet.yaml) as --set pairs, trained on
    the method's own pseudo-masks."""
    block = yaml.safe_load((ROOT / "configs/synthetic/segnet.yaml").read_text())["segnet"]
    return [f"segnet.{k}={json.dumps(v)}" for k, v in block.items()]


def run_dir(workdir: Path, variant: Variant, seed: int) -> Path:
    return workdir / f"{variant.key}_s{seed}"


def run_variant(variant: Variant, seed: int, workdir: Path, data_root: str | None) -> float:
    """Run (or resume) one variant at one seed; returns the wall seconds this call took."""
    sets = [f"pipeline.seed={seed}", f"pipeline.name={variant.key}_s{seed}", *variant.overrides]
    if variant.segnet:
        sets += segnet_overrides()
    if data_root:
        sets.append(f"data.root={data_root}")
    cmd = [sys.executable, "-m", "wsss.cli", "run", variant.preset, "--workdir", str(workdir),
           "--set", *sets]
    start = time.time()
    print(f"[bench-methods] {variant.key} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    log = run_dir(workdir, variant, seed).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        code = subprocess.call(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"[bench-methods] {variant.key} seed {seed} failed (exit {code}); "
                         f"see {log}")
    return time.time() - start


def summary(run: Path, stage: str | None) -> dict:
    if stage is None:
        return {}
    path = run / stage / "manifest.json"
    return json.loads(path.read_text()).get("summary", {}) if path.is_file() else {}


def mean_sd(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def collect(variants: list[Variant], seeds: list[int], workdir: Path) -> list[dict]:
    rows = []
    for v in variants:
        runs = [run_dir(workdir, v, s) for s in seeds]
        cam = [summary(r, v.cam).get("miou") for r in runs]
        mid = [summary(r, v.intermediate).get("miou") for r in runs]
        fin = [summary(r, v.final) for r in runs]
        val = [summary(r, "eval_val").get("miou") for r in runs] if v.segnet else []
        rows.append({
            "variant": v, "cam": cam, "intermediate": mid,
            "final": [f.get("miou") for f in fin],
            "coverage": [f.get("coverage") for f in fin],
            "contour_f": [f.get("contour_f") for f in fin],
            "val": val,
        })
    return rows


def markdown(rows: list[dict], seeds: list[int], note: str) -> str:
    lines = [f"Seeds {', '.join(map(str, seeds))} (mean ± sd, mIoU %, train split, fixed "
             f"thresholds). {note}", "",
             "| variant | CAM | intermediate | final pseudo-masks | coverage | contour F | "
             "DeepLab val |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["variant"]
        lines.append(
            f"| {v.label} | {mean_sd(r['cam'])} | {mean_sd(r['intermediate'])} "
            f"({v.intermediate or '-'}) | {mean_sd(r['final'])} ({v.final}) | "
            f"{mean_sd(r['coverage'])} | {mean_sd(r['contour_f'])} | "
            f"{mean_sd(r['val']) if v.segnet else ''} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["variant"].label for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    for offset, (key, colour) in enumerate((("cam", "tab:gray"), ("intermediate", "tab:blue"),
                                            ("final", "tab:green"))):
        for i, r in enumerate(rows):
            vals = [100 * x for x in r[key] if x is not None]
            if vals:
                y = i + (offset - 1) * 0.25
                ax.barh(y, statistics.mean(vals), height=0.25, color=colour,
                        label=key if i == 0 else None)
                ax.plot(vals, [y] * len(vals), "k.", ms=3)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("mIoU % (train split, fixed thresholds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="runs/bench-methods")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"variant keys: {' '.join(v.key for v in VARIANTS)}")
    parser.add_argument("--data-root", default=None,
                        help="another VOC-layout folder, passed as data.root")
    parser.add_argument("--out", default=None,
                        help="markdown file (default WORKDIR/methods.md, plot beside it)")
    parser.add_argument("--list", action="store_true", help="list the variants and stop")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from finished runs without running anything")
    args = parser.parse_args()
    unknown = set(args.only or []) - {v.key for v in VARIANTS}
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(sorted(unknown))}")
    variants = [v for v in VARIANTS if args.only is None or v.key in args.only]
    if args.list:
        for v in variants:
            print(f"{v.key:<20}{v.preset:<28}{' '.join(v.overrides)}")
        return
    workdir = (ROOT / args.workdir).resolve()
    out = Path(args.out) if args.out else workdir / "methods.md"
    timings = {}
    if not args.table_only:
        for v in variants:
            for seed in args.seeds:
                timings[f"{v.key}_s{seed}"] = round(run_variant(v, seed, workdir,
                                                                args.data_root), 1)
        (workdir / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    rows = collect(variants, args.seeds, workdir)
    note = (f"Data: {args.data_root or 'built-in synthetic presets'}; "
            f"{time.strftime('%Y-%m-%d')}; `python benchmarks/bench_methods.py "
            f"--seeds {' '.join(map(str, args.seeds))}"
            f"{' --data-root ' + args.data_root if args.data_root else ''}`; "
            f"this call's wall time {sum(timings.values()) / 60:.1f} min.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, args.seeds, note))
    plot(rows, out.with_suffix(".png"))
    print(out.read_text())


if __name__ == "__main__":
    main()
