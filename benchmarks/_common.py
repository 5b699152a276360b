"""Shared benchmark helpers: timing, peak memory, output agreement, the matmul rate and tables.

Benchmarks compare `wsss` against a reference written the way the official code does it, on
identical inputs in the same process, one after the other, repeated; they report the ratio of the
median times, because the machine is shared and absolute times drift with the load.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


def load_average() -> str:
    """The 1/5/15-minute load averages and the core count, e.g. "load 1.9 2.3 2.1 on 2 cores"."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} cores"


def _rss_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 to clear_refs resets VmHWM (the peak resident set size)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class Measure:
    """Median wall time over repeats and the peak extra resident memory of one callable."""

    seconds: float
    times: list[float]
    peak_mb: float | None  # peak RSS above the RSS before the call; None if not measurable
    cuda_peak_mb: float | None = None
    result: Any = field(default=None, repr=False)


def measure(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1,
            device: torch.device | str = "cpu") -> Measure:
    """Run `fn` `warmup` + `repeats` times; time each repeat, track peak memory over them all.

    CPU memory is the growth of the process's peak RSS (VmHWM, reset before the first call)
    over its RSS before the call, so it counts torch, numpy and library allocations alike.
    """
    device = torch.device(device)
    result = None
    gc.collect()
    for _ in range(warmup):
        result = fn()
        del result
    gc.collect()
    resettable = _reset_peak_rss()
    base = _rss_kb("VmRSS")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    times = []
    for i in range(repeats):
        if i:
            result = None
        began = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    peak = (_rss_kb("VmHWM") - base) / 1024 if resettable else None
    cuda_peak = None
    if device.type == "cuda":
        cuda_peak = (torch.cuda.max_memory_allocated(device) - cuda_base) / 2**20
    return Measure(statistics.median(times), times, peak, cuda_peak, result)


def compare(ours: Callable[[], Any], ref: Callable[[], Any], *, repeats: int = 3,
            warmup: int = 1, ref_repeats: int | None = None,
            device: torch.device | str = "cpu") -> tuple[Measure, Measure, float]:
    """Time `ours` and `ref` alternately (ref, ours, ref, ours, ...) so that both see the same
    load, and return their measures and the median of the per-round time ratios ref / ours.

    With `ref_repeats` < `repeats` (a slow reference), the ratio is median(ref) / median(ours).
    Peak memory is measured in a separate single call of each, after the timing rounds.
    """
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        ours()
    ref_repeats = repeats if ref_repeats is None else ref_repeats
    ours_t, ref_t = [], []
    for i in range(repeats):
        if i < ref_repeats:
            sync()
            began = time.perf_counter()
            ref()
            sync()
            ref_t.append(time.perf_counter() - began)
        sync()
        began = time.perf_counter()
        ours()
        sync()
        ours_t.append(time.perf_counter() - began)
    if ref_repeats == repeats:
        ratio = statistics.median(r / o for r, o in zip(ref_t, ours_t))
    else:
        ratio = statistics.median(ref_t) / statistics.median(ours_t)
    m_ours = measure(ours, repeats=1, warmup=0, device=device)
    m_ref = measure(ref, repeats=1, warmup=0, device=device)
    m_ours.seconds, m_ours.times = statistics.median(ours_t), ours_t
    m_ref.seconds, m_ref.times = statistics.median(ref_t), ref_t
    return m_ours, m_ref, ratio


def agreement(ours: Any, ref: Any, *, class_dim: int | None = 0) -> dict[str, Any]:
    """Max abs difference and, with `class_dim`, whether the argmax over it is identical."""
    a = torch.as_tensor(np.asarray(ours) if not isinstance(ours, torch.Tensor) else ours)
    b = torch.as_tensor(np.asarray(ref) if not isinstance(ref, torch.Tensor) else ref)
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if not a.is_floating_point():
        return {"max_abs_diff": float((a != b).sum()), "argmax_equal": bool(torch.equal(a, b))}
    a64, b64 = a.double(), b.double()
    out: dict[str, Any] = {"max_abs_diff": float((a64 - b64).abs().max()) if a.numel() else 0.0}
    if class_dim is not None:
        out["argmax_equal"] = bool(torch.equal(a64.argmax(class_dim), b64.argmax(class_dim)))
    return out


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matrix-multiply rate (GFLOP/s) of this process's torch threads: the median
    over `repeats` products of two n x n matrices (the median, not the best, because the
    machine is shared and a CAM pass lasts seconds, not one lucky product)."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - began)
    return 2 * n**3 / statistics.median(times) / 1e9


@dataclass
class Row:
    """One line of the summary table."""

    name: str
    ours_s: float
    ref_s: float | None
    target: str
    met: bool | None
    peak_mb: float | None
    ref_peak_mb: float | None = None
    agree: str = ""
    note: str = ""
    ratio_value: float | None = None  # from `compare`; else ref_s / ours_s

    @property
    def ratio(self) -> float | None:
        if self.ratio_value is not None:
            return self.ratio_value
        return None if self.ref_s is None else self.ref_s / self.ours_s


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """The summary table, plain or as Markdown."""
    head = ["benchmark", "wsss s", "reference s", "ratio", "target", "met",
            "peak MB (wsss / ref)", "agreement", "note"]
    body = []
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        peak = f"{_fmt(r.peak_mb, '.0f')} / {_fmt(r.ref_peak_mb, '.0f')}"
        body.append([r.name, _fmt(r.ours_s, ".3g"), _fmt(r.ref_s, ".3g"),
                     _fmt(r.ratio, ".1f") + ("x" if r.ratio is not None else ""), r.target, met,
                     peak, r.agree, r.note])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                  for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*row) for row in body])


def header(title: str) -> str:
    return (f"== {title} | torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{load_average()}")
