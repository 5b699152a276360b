"""`wsss report`: a static, self-contained HTML page of one run (`<run>/report/index.html`).

The page needs no network: styles are inline, figures and gallery panels are PNG files under
`report/` referenced by relative paths. Sections: config summary, results (split named, fixed
versus oracle thresholds marked), stages (time, memory), training history, per-class IoU bars,
mIoU(τ) curves of every CAM source with the per-image optimal-threshold histograms, and the
gallery (worst images first) with the class legend.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from wsss import __version__
from wsss.data.labels import IGNORE_INDEX, color_palette
from wsss.io import write_text
from wsss.report.collect import ResultRow, RunInfo, read_run
from wsss.report.gallery import Gallery, build_galleries

REPORT_DIR = "report"
# Series colours of the per-class bars (matplotlib's tab10).
SERIES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 16px 24px 48px; color: #1d1d1f; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 4px; } h2 { font-size: 19px; margin: 28px 0 8px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.meta, .note { color: #555; } .note { font-size: 13px; }
nav a { margin-right: 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.oracle td { background: #fff8e6; }
.badge { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px;
  color: #fff; } .badge.fixed { background: #2e7d32; } .badge.oracle { background: #c77700; }
.barcell { min-width: 140px; } .bar { display: inline-block; height: 11px; margin-right: 4px;
  vertical-align: middle; }
.swatch { display: inline-block; width: 13px; height: 13px; border: 1px solid #999;
  vertical-align: middle; margin-right: 4px; }
.legend span.item { display: inline-block; margin: 2px 12px 2px 0; }
.figures img { max-width: 100%; margin: 4px 12px 4px 0; border: 1px solid #eee; }
table.gallery img { width: 128px; image-rendering: pixelated; display: block; }
table.gallery td { padding: 2px; } table.gallery td.caption { font-size: 12px; width: 150px; }
pre { background: #f7f7f9; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}"


def _colour(index: int) -> str:
    r, g, b = color_palette(256)[index]
    return f"#{r:02x}{g:02x}{b:02x}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "",
           numeric: Sequence[int] = (), row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are HTML already (escape before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        rc = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        body.append(f"<tr{rc}>{cells}</tr>")
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def threshold_badge(row: ResultRow) -> str:
    if row.threshold_kind == "oracle":
        return (f'<span class="badge oracle" title="chosen with ground truth">oracle</span> '
                f"τ = {row.threshold:.2f}")
    if row.threshold_kind == "fixed":
        return (f'<span class="badge fixed" title="set in advance">fixed</span> '
                f"τ = {row.threshold:.2f}")
    return "–"


def results_html(rows: Sequence[ResultRow], *, with_run: bool = False) -> str:
    """The results table: split, threshold kind (fixed / oracle) and scores in %."""
    header = (["run"] if with_run else []) + ["result", "split", "threshold", "mIoU",
                                              "precision", "recall", "coverage", "contour F"]
    offset = 1 if with_run else 0
    body = []
    for r in rows:
        cells = ([_e(r.run)] if with_run else []) + [
            _e(r.result), _e(r.split), threshold_badge(r), _pct(r.miou), _pct(r.precision),
            _pct(r.recall), _pct(r.coverage), _pct(r.contour_f)]
        body.append(cells)
    return _table(header, body, cls="results", numeric=range(3 + offset, 8 + offset),
                  row_classes=["oracle" if r.is_oracle else "" for r in rows])


def _config_section(info: RunInfo) -> str:
    cfg = info.cfg
    parts = ['<section id="config"><h2>Config</h2>']
    if cfg is None:
        parts.append(f'<p class="note">config.yaml does not load with this version of wsss: '
                     f"{_e(info.config_error)}</p>")
    else:
        from wsss.config import to_dict

        from wsss.data.prepare import label_source_text

        d, m = cfg.data, cfg.model
        data = data_summary(info)
        items = [
            ("method", cfg.method.name),
            # What the data stage found at the root (a user's folder under a synthetic preset
            # is not synthetic data); the configured data set before the data stage has run.
            ("data", f"{data.get('kind', d.dataset)} at {d.root}"),
            ("labels", label_source_text(data["labels"]) if data.get("labels")
             else f"data.labels_from {d.labels_from}"),
            ("ground truth", ", ".join(f"{split}: {'masks' if v.get('has_masks') else 'none'}"
                                       for split, v in data.get("splits", {}).items()) or "–"),
            ("splits", f"train {d.train_split} · infer {d.infer_split} · eval {d.eval_split} · "
                       f"val {d.val_split}"),
            ("backbone", f"{m.backbone}, output stride {m.output_stride}, "
                         f"pretrained {m.pretrained}"),
            ("training", f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, crop "
                         f"{cfg.train.crop_size}, {cfg.train.optimizer} lr {cfg.train.lr}"),
        ]
        for key, value in to_dict(cfg.method).items():
            if key != "name" and not isinstance(value, dict):
                items.append((f"method.{key}", value))
        s = cfg.segnet
        items.append(("segnet", f"{s.arch} {s.backbone}, {s.iterations} iterations on "
                                f"{s.pseudo_mask_stage or 'the method pseudo-masks'}"
                      if s.enabled else "off"))
        items.append(("seed / device", f"{cfg.pipeline.seed} / {cfg.pipeline.device}"))
        parts.append(_table(["key", "value"], [(_e(k), _e(v)) for k, v in items],
                            cls="config"))
    parts.append(f"<details><summary>full config.yaml</summary><pre>{_e(info.config_text)}"
                 f"</pre></details></section>")
    return "".join(parts)


def data_summary(info: RunInfo) -> dict[str, Any]:
    """The summary of the run's data stage (root, kind, labels, splits), {} before it ran."""
    manifest = info.manifests.get("data") or {}
    return manifest.get("summary", {}) if "data" in info.stages else {}


def _ground_truth_note(info: RunInfo) -> str:
    without = [split for split, v in data_summary(info).get("splits", {}).items()
               if not v.get("has_masks")]
    if not without:
        return ""
    return (f'<p class="note">Split(s) {_e(", ".join(without))} have no ground-truth masks: '
            "the stages that score against them were skipped; CAMs, pseudo-masks and "
            "predictions are in the gallery without ground truth.</p>")


def _stale_note(info: RunInfo) -> str:
    if not info.stale:
        return ""
    return (f'<p class="note">Not shown: {_e(", ".join(info.stale))} (outside this run\'s '
            "plan, or made from inputs that have changed since).</p>")


def _results_section(info: RunInfo) -> str:
    rows = info.rows()
    if not rows:
        return ('<section id="results"><h2>Results</h2><p class="note">No stage has scored '
                "its output yet.</p>" + _ground_truth_note(info) + _stale_note(info) +
                "</section>")
    return ('<section id="results"><h2>Results</h2>' + results_html(rows) +
            _ground_truth_note(info) + _stale_note(info) +
            '<p class="note">Scores in %. <b>fixed</b>: threshold set in advance (a fair '
            "number); <b>oracle</b>: the threshold with the best mIoU on the ground truth of "
            "the same split (an upper bound, not a result). Coverage: share of labelled "
            "pixels a mask does not leave at 255; abstained pixels are not counted in IoU."
            "</p></section>")


def _stages_section(info: RunInfo) -> str:
    status = {o.get("name"): o.get("status") for o in info.outcomes}
    rows = []
    for stage in info.stages:
        res = info.manifests[stage].get("resources", {})
        rows.append((_e(stage), _e(status.get(stage, "done")), _e(res.get("seconds", "–")),
                     _e(res.get("peak_rss_mb", "–")), _e(res.get("peak_cuda_mb", "–")),
                     _e(info.manifests[stage].get("finished_at", "")),
                     _e(info.descriptions.get(stage, ""))))
    for stage in info.stale:
        rows.append((_e(stage), "stale: outside the plan or older inputs", "–", "–", "–",
                     _e(info.manifests[stage].get("finished_at", "")),
                     _e(info.descriptions.get(stage, ""))))
    return ('<section id="stages"><h2>Stages</h2>' +
            _table(["stage", "last run", "seconds", "peak RSS MB", "peak CUDA MB", "finished",
                    "what"], rows, numeric=(2, 3, 4)) + "</section>")


def _training_section(info: RunInfo) -> str:
    parts = []
    for stage in info.stages:
        path = info.run_dir / stage / "history.json"
        if not path.is_file():
            continue
        history = json.loads(path.read_text())
        if not history:
            continue
        keys = [k for k in history[0] if k != "epoch"]
        rows = [[_e(h.get("epoch"))] + [f"{h[k]:.4g}" if isinstance(h.get(k), float)
                                        else _e(h.get(k, "–")) for k in keys]
                for h in history]
        parts.append(f"<h3>{_e(stage)}</h3>" + _table(["epoch"] + [_e(k) for k in keys], rows,
                                                      numeric=range(len(keys) + 1)))
    if not parts:
        return ""
    return ('<section id="training"><h2>Training</h2><p class="note">Epoch means; per-step '
            "losses and learning rates are in TensorBoard: <code>tensorboard --logdir "
            f"{_e(info.run_dir / 'tensorboard')}</code></p>" + "".join(parts) + "</section>")


def class_bars_html(per_class: dict[str, dict[str, float | None]],
                    class_names: Sequence[str] = ()) -> str:
    """A table of per-class IoU bars, one coloured series per scored output.

    Args:
        per_class: series label → class name → IoU in [0, 1] (None: absent class).
        class_names: the data set's classes (background first), for the palette swatches.
    """
    series = list(per_class)
    names: list[str] = []
    for values in per_class.values():
        names += [n for n in values if n not in names]
    class_index = {n: i for i, n in enumerate(class_names)}
    rows = []
    for name in names:
        swatch = (f'<span class="swatch" style="background:{_colour(class_index[name])}">'
                  f"</span>" if name in class_index else "")
        cells = [swatch + _e(name)]
        for s, label in enumerate(series):
            value = per_class[label].get(name)
            if value is None:
                cells.append("n/a")
                continue
            width = max(100 * float(value), 0.5)
            cells.append(f'<span class="bar" style="width:{width:.1f}px;'
                         f'background:{SERIES[s % len(SERIES)]}"></span>{_pct(value)}')
        rows.append(cells)
    header = ["class"] + [f'<span class="swatch" style="background:{SERIES[s % len(SERIES)]}">'
                          f"</span>{_e(label)}" for s, label in enumerate(series)]
    return (_table(header, rows, cls="classes") +
            '<p class="note">IoU in % (bar length 100 px = 100 %); CAM sources at their fixed '
            "threshold; n/a: class absent from ground truth and prediction.</p>")


def run_class_names(info: RunInfo) -> list[str]:
    """The class list (background first) recorded by the run's data stage, else []."""
    for stage in info.stages:
        names = info.manifests[stage].get("summary", {}).get("class_names")
        if names:
            return list(names)
    return []


def _classes_section(info: RunInfo) -> str:
    per_class = info.per_class_iou()
    if not per_class:
        return ""
    return ('<section id="classes"><h2>Per-class IoU</h2>' +
            class_bars_html(per_class, run_class_names(info)) + "</section>")


def _threshold_section(info: RunInfo, out_dir: Path) -> str:
    from wsss.metrics.plots import plot_threshold_curves, plot_threshold_histogram

    sources = info.cam_sources()
    if not sources:
        return ""
    curves, marked = {}, {}
    figures = []
    for stage in sources:
        m = info.metrics[stage]
        cams = Path(str(m.get("cams", ""))).parent.name or stage
        label = f"{cams} → {stage} ({m.get('split')})"
        curves[label] = (m["sweep"]["thresholds"], m["sweep"]["miou"])
        marked.setdefault(float(m["fixed"]["threshold"]), []).append(stage)
    marks = {f"{', '.join(stages)} fixed": tau for tau, stages in marked.items()}
    plot_threshold_curves(curves, out_dir / "miou_vs_threshold.png", marks=marks,
                          title="mIoU(τ) of every CAM source (best τ = oracle)")
    figures.append(("miou_vs_threshold.png", "mIoU over the background threshold τ"))
    for stage in sources:
        best = list(info.metrics[stage]["sweep"].get("per_image_best_thresholds", {}).values())
        name = f"best_threshold_hist_{re.sub(r'[^A-Za-z0-9_.-]+', '_', stage)}.png"
        plot_threshold_histogram(best, out_dir / name,
                                 title=f"{stage}: per-image optimal τ (oracle)")
        figures.append((name, f"per-image optimal threshold, {stage}"))
    imgs = "".join(f'<img src="{_e(src)}" alt="{_e(alt)}">' for src, alt in figures)
    return ('<section id="thresholds"><h2>Thresholds</h2><div class="figures">' + imgs +
            '</div><p class="note">Dashed lines: the fixed thresholds the results use. The '
            "histogram shows how far the best threshold of single images spreads around one "
            "global τ.</p></section>")


def _legend(class_names: Sequence[str], indices: Iterable[int]) -> str:
    items = []
    for c in sorted(set(indices)):
        if c == IGNORE_INDEX:
            label = "ignore / unsure (255)"
        elif c < len(class_names):
            label = class_names[c]
        else:
            label = f"class {c}"
        items.append(f'<span class="item"><span class="swatch" style="background:{_colour(c)}">'
                     f"</span>{_e(label)}</span>")
    return '<div class="legend">' + "".join(items) + "</div>"


def _gallery_section(info: RunInfo, galleries: Sequence[Gallery], notes: Sequence[str]) -> str:
    parts = ['<section id="gallery"><h2>Gallery</h2>']
    for g in galleries:
        order = (f"ordered worst first by per-image mIoU of <b>{_e(g.order_stage)}</b>"
                 if g.order_stage else "in data set order (no mask stage to score)"
                 if g.ground_truth else "in data set order (no ground truth: captions name "
                 "the image-level labels)")
        if g.num_ranked < g.num_images:
            order += f" among {g.num_ranked} evenly spaced images"
        parts.append(f"<h3>split {_e(g.split)}</h3><p class=\"note\">{len(g.rows)} of "
                     f"{g.num_images} images, {order}. CAMs: per-pixel maximum over the "
                     "image's classes (jet, blue = 0, red = 1) over the image.</p>")
        parts.append(_legend(g.class_names, g.class_indices | {0, IGNORE_INDEX}))
        header = ["item"] + [_e(c.title) for c in g.columns]
        rows = []
        for r in g.rows:
            score = f"mIoU {_pct(r.miou)}<br>" if g.order_stage else ""
            caption = (f"<b>{_e(r.name)}</b><br>{score}"
                       f"{_e(', '.join(r.classes) or 'no foreground')}")
            cells = [caption]
            for c in g.columns:
                src = r.files.get(c.key)
                cells.append(f'<img src="{_e(src)}" alt="{_e(c.title)} of {_e(r.name)}">'
                             if src else "–")
            rows.append(cells)
        caption_first = [f'<td class="caption">{row[0]}</td>' + "".join(
            f"<td>{cell}</td>" for cell in row[1:]) for row in rows]
        parts.append('<table class="gallery"><thead><tr>' + "".join(f"<th>{h}</th>" for h in header)
                     + "</tr></thead><tbody>" + "".join(f"<tr>{r}</tr>" for r in caption_first)
                     + "</tbody></table>")
    if not galleries and not notes:
        parts.append('<p class="note">No images to show.</p>')
    for note in notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append("</section>")
    return "".join(parts)


def page(title: str, body: str, *, nav: Sequence[tuple[str, str]] = ()) -> str:
    """A whole HTML document with the report style."""
    links = "".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="wsss {_e(__version__)}">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
            f"{'<nav>' + links + '</nav>' if links else ''}{body}</body></html>\n")


def clear_outputs(out: Path) -> None:
    """Remove what an earlier report or comparison wrote into `out` (index.html, PNG figures,
    results.txt, gallery/), leaving any other file alone."""
    for path in [out / "index.html", out / "results.txt", *out.glob("*.png")]:
        path.unlink(missing_ok=True)
    if (out / "gallery").is_dir():
        shutil.rmtree(out / "gallery")


def write_report(run_dir: str | Path, *, out_dir: str | Path | None = None,
                 max_images: int = 24) -> Path:
    """Write the HTML report of `run_dir` (default `run_dir/report/index.html`).

    Earlier report files in the folder are replaced. Works on partial runs: sections without data
    are left out or say what is missing.

    Args:
        run_dir: a run directory (`<workdir>/<name>`, holding `config.yaml`).
        out_dir: report folder; default `run_dir/report`.
        max_images: gallery rows per split.

    Returns:
        The path of `index.html`.

    Raises:
        FileNotFoundError: `run_dir` is not a run directory.
    """
    info = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else info.run_dir / REPORT_DIR
    clear_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    galleries, notes = build_galleries(info, out, max_images=max_images)
    method = info.cfg.method.name if info.cfg is not None else "?"
    header = (f"<h1>wsss report · {_e(info.name)}</h1><p class=\"meta\">method "
              f"<b>{_e(method)}</b> · run directory <code>{_e(info.run_dir.resolve())}</code> · "
              f"written {time.strftime('%Y-%m-%d %H:%M')} by wsss {_e(__version__)}</p>")
    sections = [
        ("config", "Config", _config_section(info)),
        ("results", "Results", _results_section(info)),
        ("stages", "Stages", _stages_section(info)),
        ("training", "Training", _training_section(info)),
        ("classes", "Per-class IoU", _classes_section(info)),
        ("thresholds", "Thresholds", _threshold_section(info, out)),
        ("gallery", "Gallery", _gallery_section(info, galleries, notes)),
    ]
    nav = [(anchor, title) for anchor, title, body in sections if body]
    body = header + "".join(body for _, _, body in sections)
    path = out / "index.html"
    write_text(path, page(f"wsss report · {info.name}", body, nav=nav))
    return path
