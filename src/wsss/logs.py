"""Progress and log files: tqdm bars on a terminal only, plain lines elsewhere, `<run>/log.txt`.

A bar redraws itself with carriage returns; in a log file (a batch job, `wsss run ... > log`)
each redraw is a frame, thousands per stage. `progress` gives a tqdm bar only when stderr is a
terminal and `TQDM_DISABLE` is unset; otherwise a `LineProgress` logs one line per tenth of the
items (at most one every `LINE_SECONDS`), through the `wsss` logger, so it also lands in the
run's `log.txt`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("wsss")

LINE_SECONDS = 10.0  # the shortest gap between two progress lines of one loop
RUN_LOG_NAME = "log.txt"
_TRUE = ("1", "true", "yes", "on")


def bars_enabled() -> bool:
    """tqdm bars: stderr is a terminal and `TQDM_DISABLE` is not set to a true value."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class LineProgress:
    """The subset of the tqdm interface the library uses (iterate, `update`, `set_postfix`,
    `close`), writing a log line per tenth of `total` instead of redrawing a bar."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str = "", initial: int = 0, enabled: bool = True) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc
        self.n = initial
        self.enabled = enabled
        self.postfix = ""
        self._step = max(1, (total or 0) // 10)
        self._next = initial + self._step
        self._last = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update()

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled or self.n < self._next:
            return
        self._next = self.n + self._step
        now = time.monotonic()
        if now - self._last < LINE_SECONDS and (self.total is None or self.n < self.total):
            return
        self._last = now
        of = f"/{self.total}" if self.total else ""
        log.info("%s: %d%s%s", self.desc, self.n, of, f"  {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "  ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             initial: int = 0, enabled: bool = True) -> Any:
    """A progress wrapper: a tqdm bar (`leave=False`) on a terminal, else a `LineProgress`.

    Args:
        iterable: items to wrap (None: call `update` by hand).
        total: number of items (default: `len(iterable)`).
        enabled: False for silence (e.g. ranks other than 0).
    """
    if enabled and bars_enabled():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False)
    return LineProgress(iterable, total=total, desc=desc, initial=initial, enabled=enabled)


def attach_run_log(run_dir: str | Path) -> Path:
    """Also write the `wsss` logger's lines to `<run_dir>/log.txt` (appended: a resumed run
    adds to it). Replaces the handler of an earlier run in this process; a second call for the
    same folder keeps the handler. Returns the path."""
    path = Path(run_dir) / RUN_LOG_NAME
    for handler in logging.getLogger("wsss").handlers:
        if handler.get_name() == "wsss-run-log" and \
                Path(getattr(handler, "baseFilename", "")) == path.absolute():
            return path  # already attached (the runner attaches before its identity check)
    detach_run_log()
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.set_name("wsss-run-log")
    logger = logging.getLogger("wsss")
    if logger.level == logging.NOTSET:  # a library call: the CLI sets INFO itself
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    log_to_run_file(f"wsss {' '.join(sys.argv[1:])}", level=logging.INFO)
    return path


def detach_run_log() -> None:
    """Close and remove the run log handler, if any."""
    logger = logging.getLogger("wsss")
    for handler in list(logger.handlers):
        if handler.get_name() == "wsss-run-log":
            logger.removeHandler(handler)
            handler.close()


def log_to_run_file(message: str, *, level: int = logging.INFO) -> None:
    """Write `message` to the run log only (the terminal shows it already: the command line,
    the results table, the error line `wsss` prints to stderr)."""
    for handler in logging.getLogger("wsss").handlers:
        if handler.get_name() == "wsss-run-log":
            handler.handle(logging.LogRecord("wsss", level, __file__, 0, message, None, None))
