"""Run-directory layout, manifests and fingerprints.

Layout: `<workdir>/<name>/config.yaml`, `<workdir>/<name>/<stage>/...` and, written last,
`<workdir>/<name>/<stage>/manifest.json`. A stage in progress holds `.inprogress.json` with the
fingerprint it started with, so a killed stage resumes only into outputs of the same config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from wsss import __version__
from wsss.io import write_text

MANIFEST = "manifest.json"
IN_PROGRESS = ".inprogress.json"


class ManifestError(RuntimeError):
    """A manifest that cannot be trusted (unreadable or failing its own checksum)."""


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
