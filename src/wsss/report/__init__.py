"""Seeing results: the static HTML report of a run, the comparison of runs, TensorBoard logs.

- `html.write_report(run_dir)` → `<run>/report/index.html` (`wsss report`, and the end of
  `wsss run` when `pipeline.report`).
- `compare.compare_runs(run_dirs, out_dir)` → one table and one set of curves (`wsss compare`).
- `tensorboard`: the `Trainer` logger and eval-stage logging under `<run>/tensorboard/<stage>`.
- `collect` reads run directories; `gallery` and `render` draw the image panels.
"""

from wsss.report.compare import compare_runs
from wsss.report.html import write_report

__all__ = ["compare_runs", "write_report"]
