"""Run-directory layout, manifests and fingerprints.

Layout: `<workdir>/<name>/config.yaml`, `<workdir>/<name>/<stage>/...` and, written last,
`<workdir>/<name>/<stage>/manifest.json`. A stage in progress holds `.inprogress.json` with the
fingerprint it started with, so a killed stage resumes only into outputs of the same config.
`<run>/plan.json` names the stages of the last run's plan and those whose outputs are current
(made by that plan from current inputs); `<run>/.lock` is held by the run in progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsss import __version__
from wsss.io import write_text

MANIFEST = "manifest.json"
IN_PROGRESS = ".inprogress.json"
PLAN = "plan.json"
LOCK = ".lock"


class ManifestError(RuntimeError):
    """A manifest that cannot be trusted (unreadable or failing its own checksum)."""


class PipelineError(RuntimeError):
    """A run that cannot start or go on as asked (busy or inconsistent run directory, a stage
    whose inputs are missing); the message says what to do instead."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message names the stage and how to resume."""


def fingerprint(payload: Any) -> str:
    """sha256 of the canonical JSON of `payload` (keys sorted)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _checksum(body: dict[str, Any]) -> str:
    return fingerprint({k: v for k, v in body.items() if k != "checksum"})


def write_manifest(stage_dir: Path, body: dict[str, Any]) -> None:
    body = {**body, "version": __version__}
    body["checksum"] = _checksum(body)
    write_text(stage_dir / MANIFEST, json.dumps(body, indent=2, sort_keys=True) + "\n")


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's manifest, None when absent.

    Raises:
        ManifestError: the file is unreadable or its checksum does not match its content.
    """
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc}); delete it to rerun the stage") from exc
    if not isinstance(body, dict) or body.get("checksum") != _checksum(body):
        raise ManifestError(
            f"{path}: manifest checksum mismatch (edited or corrupt); delete it to rerun the stage"
        )
    return body


def write_in_progress(stage_dir: Path, fp: str) -> None:
    write_text(stage_dir / IN_PROGRESS, json.dumps({"fingerprint": fp}) + "\n")


def read_in_progress(stage_dir: Path) -> str | None:
    path = stage_dir / IN_PROGRESS
    try:
        return json.loads(path.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_plan(run_dir: Path, stages: list[str], current: list[str]) -> None:
    """Record the plan of this run (`stages`, in order) and the stages whose outputs are current."""
    write_text(run_dir / PLAN, json.dumps({"stages": stages, "current": current}, indent=2) + "\n")


def read_plan(run_dir: str | Path) -> dict[str, list[str]] | None:
    """`{"stages": [...], "current": [...]}` of the run's last plan, None when unrecorded
    (runs of older versions) or unreadable."""
    try:
        body = json.loads((Path(run_dir) / PLAN).read_text())
        return {"stages": list(body["stages"]), "current": list(body["current"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def current_stages(run_dir: str | Path, names: list[str]) -> tuple[list[str], list[str]]:
    """Split stage folders `names` into (current, stale) by the run's plan: stale stages are
    outside the last plan or were made from inputs that have changed since. Without a recorded
    plan every stage counts as current."""
    plan = read_plan(run_dir)
    if plan is None:
        return list(names), []
    current = set(plan["current"])
    return [n for n in names if n in current], [n for n in names if n not in current]


_held: dict[Path, tuple[int, int]] = {}  # lock path -> (file descriptor, re-entry count)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock (`fcntl.flock` on `<run_dir>/.lock`) for the duration.

    Re-entrant within a process (the CLI holds it over the run and the report, the runner over
    the stages). The lock file records the holder's pid and start time for the message.

    Raises:
        PipelineError: another process holds the lock and `wait` is false.
    """
    run_dir = Path(run_dir)
    path = (run_dir / LOCK).absolute()
    if path in _held:
        fd, count = _held[path]
        _held[path] = (fd, count + 1)
        try:
            yield
        finally:
            fd, count = _held[path]
            _held[path] = (fd, count - 1)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise PipelineError(
                    f"{run_dir} is in use by another wsss run ({holder}); wait for it to "
                    "finish, pass --wait to queue behind it, or choose another run directory "
                    "(--set pipeline.name=NAME or --workdir DIR)"
                ) from None
            logging.getLogger("wsss").info("waiting for the run holding %s (%s)", run_dir, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without locks (ENOLCK): run, but say so
            logging.getLogger("wsss").warning("cannot lock %s (%s); make sure no other run uses "
                                              "this run directory", path, exc.strerror or exc)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        _held[path] = (fd, 1)
        try:
            yield
        finally:
            del _held[path]
    finally:
        os.close(fd)  # closing the descriptor releases the lock
