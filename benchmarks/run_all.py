"""Run every benchmark and print one table (and, with --markdown, the table for the docs).

    python benchmarks/run_all.py [--repeats 3] [--quick] [--full] [--bf16] [--markdown]

--quick skips the slowest references (the 375x500 PAMR loop); --full adds the dense IRN walk
at the VOC size (minutes, ~2.5 GB); --bf16 adds the bf16 CAM inference row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cam  # noqa: E402
import bench_crf  # noqa: E402
import bench_pamr  # noqa: E402
import bench_random_walk  # noqa: E402
import bench_sweep  # noqa: E402
import bench_train_step  # noqa: E402
from _common import format_table, header, load_average  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time CAM inference through torch.compile (pipeline.compile)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--only", nargs="*", default=None,
                        help="subset of: pamr walk cam crf sweep train")
    args = parser.parse_args()
    suites = {
        "pamr": lambda: bench_pamr.run(args.repeats, args.quick),
        "walk": lambda: bench_random_walk.run(args.repeats, args.full),
        "cam": lambda: bench_cam.run(args.repeats, args.bf16, args.compile),
        "crf": lambda: bench_crf.run(args.repeats),
        "sweep": lambda: bench_sweep.run(args.repeats),
        "train": lambda: bench_train_step.run(args.repeats),
    }
    print(header("all benchmarks"), flush=True)
    rows = []
    began = time.perf_counter()
    for name, fn in suites.items():
        if args.only and name not in args.only:
            continue
        part = fn()
        print(format_table(part), flush=True)
        print(f"   ({load_average()})", flush=True)
        rows += part
    print(f"\n== summary ({time.perf_counter() - began:.0f} s, {load_average()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(format_table(rows, markdown=args.markdown))


if __name__ == "__main__":
    main()
