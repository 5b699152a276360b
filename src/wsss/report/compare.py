"""`wsss compare`: one results table and one set of mIoU(τ) curves over several runs.

Runs are compared on their own scored outputs; the comparison says so when the runs read
different data (data set, root or splits), since their numbers are then not comparable.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsss.io import write_text
from wsss.report.collect import ResultRow, RunInfo, read_run
from wsss.report.html import (
    class_bars_html,
    clear_outputs,
    page,
    results_html,
    run_class_names,
)


@dataclass
class Comparison:
    labels: list[str]
    rows: list[ResultRow]
    notes: list[str]
    html_path: Path
    curves_path: Path | None

    def table(self) -> str:
        return format_rows(self.rows)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique labels: the run folder names, with their parents where names repeat."""
    names = [p.name for p in run_dirs]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name
              for p in run_dirs]
    seen: dict[str, int] = {}
    out = []
    for label in labels:  # the same folder given twice
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def format_rows(rows: Sequence[ResultRow]) -> str:
    """A plain-text table: run, result, split, threshold (fixed / oracle), scores in %."""
    width = max([len(r.run) for r in rows] + [3]) + 2
    result_width = max([len(r.result) for r in rows] + [6]) + 2
    header = (f"{'run':<{width}}{'result':<{result_width}}{'split':<10}{'threshold':<14}"
              f"{'mIoU':>7}{'prec':>7}{'rec':>7}{'cover':>7}{'cF':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.run:<{width}}{r.result:<{result_width}}{r.split:<10}"
                     f"{r.threshold_text:<14}{_pct(r.miou):>7}{_pct(r.precision):>7}"
                     f"{_pct(r.recall):>7}{_pct(r.coverage):>7}{_pct(r.contour_f):>7}")
    return "\n".join(lines)


def data_notes(infos: Sequence[RunInfo], labels: Sequence[str]) -> list[str]:
    """Warnings when the runs did not read the same data (or a config does not load)."""
    notes = []
    keys = {}
    for info, label in zip(infos, labels):
        if info.cfg is None:
            notes.append(f"{label}: config.yaml does not load ({info.config_error})")
            continue
        d = info.cfg.data
        keys[label] = (d.dataset, str(Path(d.root).resolve()), d.eval_split, d.val_split)
    if len(set(keys.values())) > 1:
        described = "; ".join(f"{label}: {k[0]} at {k[1]}, eval {k[2]}, val {k[3]}"
                              for label, k in keys.items())
        notes.append(f"the runs read different data, so their numbers are not comparable "
                     f"({described})")
    return notes


def is_comparison(path: Path, out_dir: Path) -> bool:
    """True for `out_dir` itself, and for a folder a comparison wrote (no config.yaml, a
    results.txt and an index.html)."""
    if path.resolve() == out_dir.resolve():
        return True
    return (not (path / "config.yaml").exists() and (path / "results.txt").is_file()
            and (path / "index.html").is_file())


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Comparison:
    """Write `out_dir/index.html` (and `miou_vs_threshold.png`, `results.txt`) comparing runs.

    Args:
        run_dirs: two or more run directories. `out_dir` itself and earlier comparison folders
            among them (a shell glob such as `runs/*` names `runs/compare`) are skipped with a
            note.
        out_dir: output folder (earlier comparison files in it are replaced).

    Returns:
        the rows, notes and written paths.

    Raises:
        FileNotFoundError: a path is not a run directory.
    """
    from wsss.metrics.plots import plot_threshold_curves

    out = Path(out_dir)
    skipped = [Path(p) for p in run_dirs if is_comparison(Path(p), out)]
    paths = [Path(p) for p in run_dirs if Path(p) not in skipped]
    if not paths:
        raise FileNotFoundError(f"no run directories among {', '.join(map(str, run_dirs))}")
    infos = [read_run(p) for p in paths]
    labels = run_labels(paths)
    clear_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for info, label in zip(infos, labels) for row in info.rows(label)]
    notes = [f"skipped {p}: a comparison's output folder, not a run" for p in skipped]
    notes += data_notes(infos, labels)

    curves, marks = {}, {}
    for info, label in zip(infos, labels):
        for stage in info.cam_sources():
            m = info.metrics[stage]
            curves[f"{label}: {stage} ({m.get('split')})"] = (m["sweep"]["thresholds"],
                                                              m["sweep"]["miou"])
            marks.setdefault(f"fixed {m['fixed']['threshold']:.2f}", m["fixed"]["threshold"])
    curves_path = None
    if curves:
        curves_path = plot_threshold_curves(
            curves, out / "miou_vs_threshold.png",
            marks=sorted(set(marks.values())), title="mIoU(τ) per run and CAM source")

    per_class = {}
    for info, label in zip(infos, labels):
        for series, values in info.per_class_iou().items():
            per_class[f"{label}: {series}"] = values
    class_names = next((n for n in (run_class_names(i) for i in infos) if n), [])

    table = format_rows(rows)
    write_text(out / "results.txt", table + "\n")
    body = [f"<h1>wsss compare · {len(infos)} runs</h1>",
            '<p class="meta">' + " · ".join(f"<b>{_e(label)}</b> <code>"
                                            f"{_e(info.run_dir.resolve())}</code>"
                                            for info, label in zip(infos, labels)) + "</p>"]
    body += [f'<p class="note"><b>note:</b> {_e(n)}</p>' for n in notes]
    body.append('<section id="results"><h2>Results</h2>' + results_html(rows, with_run=True)
                + '<p class="note">Scores in %; <b>oracle</b> rows choose τ with ground truth.'
                "</p></section>")
    if curves_path is not None:
        body.append('<section id="thresholds"><h2>mIoU(τ)</h2><div class="figures">'
                    '<img src="miou_vs_threshold.png" alt="mIoU over the threshold per run">'
                    "</div></section>")
    if per_class:
        body.append('<section id="classes"><h2>Per-class IoU</h2>'
                    + class_bars_html(per_class, class_names) + "</section>")
    html_path = out / "index.html"
    write_text(html_path, page(f"wsss compare · {', '.join(labels)}", "".join(body)))
    return Comparison(labels=labels, rows=rows, notes=notes, html_path=html_path,
                      curves_path=curves_path)
