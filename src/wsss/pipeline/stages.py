"""Stage declaration, the context a stage runs in, and the resumable per-image loop."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsss.config import RunConfig
from wsss.engine import distributed as dist
from wsss.io import remove_temporaries
from wsss.logs import progress

log = logging.getLogger("wsss")


@dataclass(frozen=True)
class Stage:
    """One pipeline step.

    Args:
        name: folder name under the run directory, e.g. "make_cam".
        run: called with a `StageContext`; returns a JSON-ready summary stored in the manifest.
        needs: names of stages whose outputs this one reads.
        depends_on: dotted config keys whose values form this stage's fingerprint.
        ground_truth: the config key of the split whose ground-truth masks the stage scores
            against (e.g. "data.eval_split"); the runner skips the stage, saying why, when that
            split has no masks. "" for stages that need no ground truth.
    """

    name: str
    run: Callable[[StageContext], dict[str, Any] | None]
    needs: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    description: str = ""
    ground_truth: str = ""


@dataclass
class StageContext:
    """What a running stage sees: config, folders, device, method and upstream manifests."""

    cfg: RunConfig
    run_dir: Path
    out_dir: Path
    device: torch.device
    method: Any
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name


def per_image(
    names: Sequence[str],
    out_paths: Callable[[str], Path],
    work: Callable[[str], None],
    *,
    desc: str,
    workers: int = 1,
    pool_work: Callable[[Any], None] | None = None,
    pool_args: Callable[[str], Any] | None = None,
) -> int:
    """Run `work(name)` for this rank's share of `names` whose output does not exist yet.

    Items are split across ranks by stride; a resumed stage skips items already written (every
    writer is atomic, so an existing file is a complete one). With `workers > 1` and
    `pool_work`, the items run in a process pool as `pool_work(pool_args(name))`.

    Returns:
        the number of items this rank computed.
    """
    mine = dist.shard(list(names))
    if dist.is_main():  # leftovers of a killed run; removed before any rank starts writing
        for folder in {out_paths(n).parent for n in names}:
            remove_temporaries(folder)
    dist.barrier()
    todo = [n for n in mine if not out_paths(n).is_file()]
    if len(todo) < len(mine):
        log.info("%s: %d of %d items already done, resuming", desc, len(mine) - len(todo), len(mine))
    bar = progress(total=len(todo), desc=desc, enabled=dist.is_main())
    if workers > 1 and pool_work is not None and pool_args is not None and len(todo) > 1:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
        try:
            for _ in pool.map(pool_work, (pool_args(n) for n in todo), chunksize=4):
                bar.update()
        except BaseException:
            # Ctrl-C or a failed item: let the running items finish (their writes are atomic)
            # and drop the queued ones, instead of computing the whole rest of the split.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        for name in todo:
            work(name)
            bar.update()
    bar.close()
    dist.barrier()
    return len(todo)


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the main process, which stops the pool and says how to
    resume (each worker would otherwise print its own KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def select_stages(
    stages: Sequence[Stage],
    *,
    start: str | None = None,
    until: str | None = None,
    only: Iterable[str] = (),
) -> list[Stage]:
    """Stages to run, by `--from`, `--until` and `--only` (unknown names raise, listing the valid)."""
    names = [s.name for s in stages]
    for flag, value in (("--from", start), ("--until", until), *(("--only", o) for o in only)):
        if value is not None and value not in names:
            raise ValueError(f"{flag} {value}: unknown stage; this pipeline has {', '.join(names)}")
    only = list(only)
    if only:
        return [s for s in stages if s.name in only]
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(names) - 1
    return list(stages[first : last + 1])
