"""One intra-op thread for small, memory-bound CPU work (PAMR, random walks, threshold sweeps).

These ops are hundreds of small tensor ops in a row; on a loaded 2-core machine OpenMP's
barriers made two threads 5-40x slower than one (docs/performance.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["single_cpu_thread"]


@contextlib.contextmanager
def single_cpu_thread(on_cpu: bool = True) -> Iterator[None]:
    """Run the block with one intra-op thread when `on_cpu`; restore the count afterwards."""
    threads = torch.get_num_threads()
    if on_cpu and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
