"""Read a finished (or partial) run directory: config, stage order, manifests, scores, outputs.

Everything is found generically: a stage that scored something has `summary.miou` in its
manifest and a `metrics.json` (further results as `metrics_<variant>.json`, e.g. segnet's
`metrics_crf.json`); a CAM source is a metrics file with a `sweep` section; CAM files are
`<stage>/<folder>/*.npz` holding `cams`, and masks `<stage>/<folder>/*.png`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsss.pipeline.artifacts import current_stages, read_manifest

log = logging.getLogger("wsss")


@dataclass(frozen=True)
class ResultRow:
    """One scored output: a CAM source at its fixed or oracle threshold, or a mask stage.

    `threshold_kind` is "fixed" (set in advance), "oracle" (chosen with ground truth) or "" (a
    mask stage, no threshold). Scores are in [0, 1] or None.
    """

    run: str
    result: str
    stage: str
    split: str
    threshold_kind: str
    threshold: float | None
    miou: float | None
    precision: float | None = None
    recall: float | None = None
    coverage: float | None = None
    contour_f: float | None = None

    @property
    def is_oracle(self) -> bool:
        return self.threshold_kind == "oracle"

    @property
    def threshold_text(self) -> str:
        if not self.threshold_kind:
            return "-"
        return f"{self.threshold_kind} {self.threshold:.2f}" if self.threshold is not None \
            else self.threshold_kind


@dataclass(frozen=True)
class OutputFolder:
    """A folder of per-image outputs: `<run>/<stage>/<folder>/<image>.npz|.png`."""

    stage: str
    folder: str
    kind: str  # cams | masks

    @property
    def label(self) -> str:
        return self.stage if self.folder == self.kind else f"{self.stage}/{self.folder}"


def _mean(per_class: Any) -> float | None:
    values = [v for v in (per_class or {}).values() if v is not None]
    return float(np.mean(values)) if values else None


@dataclass
class RunInfo:
    """What a report needs from one run directory (see `read_run`)."""

    run_dir: Path
    config_text: str
    cfg: Any  # RunConfig, or None when config.yaml no longer loads (the text is still shown)
    config_error: str | None
    stages: list[str]  # stages with a manifest, in pipeline order
    manifests: dict[str, dict[str, Any]]
    # label → a metrics file: "<stage>" for metrics.json, "<stage> (<variant>)" for
    # metrics_<variant>.json; in stage order
    metrics: dict[str, dict[str, Any]]
    descriptions: dict[str, str] = field(default_factory=dict)
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # stages.json (last invocation)
    # Stage folders with a manifest that are outside the run's last plan or were made from
    # inputs that have changed since; left out of `stages` (and so of every result).
    stale: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def rows(self, label: str | None = None) -> list[ResultRow]:
        """One row per scored output; a CAM source gives a fixed-τ and an oracle row."""
        run = label or self.name
        rows = []
        for stage in self.stages:
            s = self.manifests[stage].get("summary", {})
            if "miou" not in s:
                continue
            split = str(s.get("split"))
            if "oracle_miou" in s:
                rows.append(ResultRow(run, f"{stage} (fixed τ)", stage, split, "fixed",
                                      s.get("threshold"), s["miou"], s.get("precision"),
                                      s.get("recall"), 1.0))
                rows.append(ResultRow(run, f"{stage} (best τ)", stage, split, "oracle",
                                      s.get("oracle_threshold"), s["oracle_miou"], coverage=1.0))
            else:
                rows.append(ResultRow(run, stage, stage, split, "", None, s["miou"],
                                      s.get("precision"), s.get("recall"), s.get("coverage"),
                                      s.get("contour_f")))
            for label, m in self.metrics.items():  # metrics_<variant>.json of masks
                if label.startswith(f"{stage} (") and "miou" in m:
                    rows.append(ResultRow(
                        run, label, stage, str(m.get("split", split)), "", None, m["miou"],
                        _mean(m.get("precision")), _mean(m.get("recall")), m.get("coverage"),
                        (m.get("contour") or {}).get("fscore")))
        return rows

    def cam_sources(self) -> list[str]:
        """Metrics labels whose file holds a threshold sweep (eval stages of CAMs)."""
        return [label for label, m in self.metrics.items() if "sweep" in m]

    def per_class_iou(self) -> dict[str, dict[str, float | None]]:
        """Scored output → class → IoU (a CAM source at its fixed threshold)."""
        out = {}
        for label, m in self.metrics.items():
            body = m["fixed"] if "fixed" in m else m
            if isinstance(body.get("iou"), dict):
                out[f"{label} (fixed τ)" if "fixed" in m else label] = body["iou"]
        return out

    def output_folders(self, kind: str) -> list[OutputFolder]:
        """Folders of CAM files (kind "cams": `.npz` holding `cams`) or masks (kind "masks":
        `.png`) in stage order. Within a stage the folder named like the kind comes first, then
        the folders in the order eval stages scored them, then the rest by name."""
        suffix = ".npz" if kind == "cams" else ".png"
        scored = self._scored_folders(kind)
        out = []
        for stage in self.stages:
            found = []
            for sub in sorted(p for p in (self.run_dir / stage).iterdir() if p.is_dir()):
                first = next(sub.glob(f"*{suffix}"), None)
                if first is None or not (_holds_cams(first) if kind == "cams"
                                         else _holds_masks(first)):
                    continue
                rank = -1 if sub.name == kind else scored.get((stage, sub.name), len(scored))
                found.append((rank, sub.name))
            out += [OutputFolder(stage, name, kind) for _, name in sorted(found)]
        return out

    def _scored_folders(self, kind: str) -> dict[tuple[str, str], int]:
        """(stage, folder) → position among the folders the metrics files name under `kind`."""
        order: dict[tuple[str, str], int] = {}
        for m in self.metrics.values():
            for body in (m, *(v for v in m.values() if isinstance(v, dict))):
                path = body.get(kind) if isinstance(body.get(kind), str) else None
                if path:
                    key = (Path(path).parent.name, Path(path).name)
                    order.setdefault(key, len(order))
        return order


def _holds_cams(path: Path) -> bool:
    try:
        with np.load(path) as data:
            return "cams" in data.files and "keys" in data.files
    except (OSError, ValueError):
        return False


def _holds_masks(path: Path) -> bool:
    """Class-index masks are palette PNGs (`save_mask`); grayscale PNGs beside them (AuxSegNet's
    updated `saliency/`) are not masks."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode == "P"
    except OSError:
        return False


def _stage_order(run_dir: Path, cfg: Any, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Stages in the method's pipeline order (unknown ones after, by finish time)."""
    order: list[str] = []
    descriptions: dict[str, str] = {}
    if cfg is not None:
        try:
            from wsss.methods import build_method

            for stage in build_method(cfg).stages():
                order.append(stage.name)
                descriptions[stage.name] = stage.description
        except Exception as exc:  # a method that no longer builds: fall back to finish times
            log.warning("report: cannot list the stages of %s (%s); ordering by finish time",
                        run_dir, exc)
    known = [s for s in order if s in names]
    rest = sorted((s for s in names if s not in order),
                  key=lambda s: (str(read_manifest(run_dir / s).get("finished_at")), s))
    return known + rest, descriptions


def read_run(run_dir: str | Path) -> RunInfo:
    """Read `run_dir` (a folder with `config.yaml` and stage folders).

    Raises:
        FileNotFoundError: `run_dir` has no `config.yaml`.
    """
    from wsss.config import ConfigError, load_config

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    config_text = config_path.read_text()
    cfg, error = None, None
    try:  # paths are absolute since wsss records them so; older runs resolved against the cwd
        cfg = load_config(config_path, base_dir=Path.cwd())
    except (ConfigError, ValueError, KeyError) as exc:
        error = str(exc)
    manifests = {}
    for path in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        manifest = read_manifest(path)
        if manifest is not None:
            manifests[path.name] = manifest
    current, stale = current_stages(run_dir, list(manifests))
    stages, descriptions = _stage_order(run_dir, cfg, current)
    stale = _stage_order(run_dir, cfg, stale)[0]
    manifests = {name: manifests[name] for name in stages + stale}
    metrics = {}
    for stage in stages:
        path = run_dir / stage / "metrics.json"
        if path.is_file():
            metrics[stage] = json.loads(path.read_text())
        for path in sorted((run_dir / stage).glob("metrics_*.json")):
            metrics[f"{stage} ({path.stem[len('metrics_'):]})"] = json.loads(path.read_text())
    outcomes = []
    if (run_dir / "stages.json").is_file():
        outcomes = json.loads((run_dir / "stages.json").read_text())
    return RunInfo(run_dir=run_dir, config_text=config_text, cfg=cfg, config_error=error,
                   stages=stages, manifests=manifests, metrics=metrics,
                   descriptions=descriptions, outcomes=outcomes, stale=stale)
