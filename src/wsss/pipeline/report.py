"""Plain-text tables of a run's results (read from stage manifests) and of one evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss.pipeline.artifacts import current_stages, read_manifest


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def results_table(run_dir: str | Path) -> str:
    """One row per scored output of the run: mIoU, precision, recall, coverage, contour F.

    Every row names its split and whether its threshold was fixed in advance or chosen with
    ground truth (oracle). Stages outside the run's last plan, or made from inputs that have
    changed since, are left out and named below the table.
    """
    run_dir = Path(run_dir)
    header = (f"{'result':<34}{'split':<10}{'threshold':<18}{'mIoU':>7}{'prec':>7}{'rec':>7}"
              f"{'cover':>7}{'cF':>7}")
    rows = [header, "-" * len(header)]
    names = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    current, stale = current_stages(run_dir, names)
    stale_scored = []
    for name in stale:
        manifest = read_manifest(run_dir / name)
        if manifest and _is_scored(manifest.get("summary", {})):
            stale_scored.append(name)
    for stage_dir in (run_dir / name for name in current):
        manifest = read_manifest(stage_dir)
        if not manifest:
            continue
        s = manifest.get("summary", {})
        if "miou" not in s:
            continue
        if "oracle_miou" in s:
            rows.append(f"{stage_dir.name + ' (fixed τ)':<34}{str(s.get('split')):<10}"
                        f"{'fixed ' + format(s['threshold'], '.2f'):<18}{_pct(s['miou']):>7}"
                        f"{_pct(s.get('precision')):>7}{_pct(s.get('recall')):>7}{'100.0':>7}"
                        f"{'-':>7}")
            rows.append(f"{stage_dir.name + ' (best τ)':<34}{str(s.get('split')):<10}"
                        f"{'oracle ' + format(s['oracle_threshold'], '.2f'):<18}"
                        f"{_pct(s['oracle_miou']):>7}{'-':>7}{'-':>7}{'100.0':>7}{'-':>7}")
        else:
            rows.append(f"{stage_dir.name:<34}{str(s.get('split')):<10}{'-':<18}"
                        f"{_pct(s['miou']):>7}{_pct(s.get('precision')):>7}"
                        f"{_pct(s.get('recall')):>7}{_pct(s.get('coverage')):>7}"
                        f"{_pct(s.get('contour_f')):>7}")
    rows += classifier_lines(run_dir, current)
    if stale_scored:
        rows.append(f"not shown (outside this run's plan, or made from older inputs): "
                    f"{', '.join(stale_scored)}")
    return "\n".join(rows)


def _is_classifier(summary: dict[str, Any]) -> bool:
    return "exact_match" in summary and "mAP" in summary and "split" in summary


def _is_scored(summary: dict[str, Any]) -> bool:
    return "miou" in summary or _is_classifier(summary)


def classifier_lines(run_dir: str | Path, stages: list[str]) -> list[str]:
    """One line per classifier among `stages` scored on image-level labels (`eval_cls`,
    `eval_pretrain`): exact-match accuracy and mAP."""
    lines = []
    for name in stages:
        s = (read_manifest(Path(run_dir) / name) or {}).get("summary", {})
        if _is_classifier(s):
            line = (f"classifier ({name}, split {s['split']}, {s.get('images')} images): "
                    f"exact-match accuracy {_pct(s['exact_match'])} %, mAP {_pct(s['mAP'])} %")
            if "train_loss" in s:
                line += (f"; last training epoch's loss {s['train_loss']:.3f} (a classifier "
                         f"that learned nothing: {s['prior_loss']:.3f})")
            lines.append(line)
    return lines


def format_eval(result: dict[str, Any], class_names: list[str]) -> str:
    """Per-class table of one `wsss eval` result (masks or CAMs)."""
    if "fixed" in result:
        f, s = result["fixed"], result["sweep"]
        lines = [
            f"split {result.get('split')}: CAM mIoU {_pct(f['miou'])} at fixed threshold "
            f"{f['threshold']:.2f}; oracle best {_pct(s['best_miou'])} at "
            f"{s['best_threshold']:.2f} (chosen with ground truth)",
        ]
        body = f
    else:
        lines = [f"split {result.get('split')}: mIoU {_pct(result['miou'])}, coverage "
                 f"{_pct(result.get('coverage'))} (share of labelled pixels not left at 255)"]
        if "contour" in result:
            lines[0] += f", contour F {_pct(result['contour']['fscore'])}"
        body = result
    lines.append(f"{'class':<16}{'IoU':>7}{'prec':>7}{'rec':>7}")
    for name in class_names:
        lines.append(f"{name:<16}{_pct(body['iou'].get(name)):>7}"
                     f"{_pct(body['precision'].get(name)):>7}{_pct(body['recall'].get(name)):>7}")
    return "\n".join(lines)
