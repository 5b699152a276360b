"""Backbone weights shipped inside the package (`model.pretrained: synthetic`).

`index.json` beside this file lists, per backbone name, the weights file, its sha256, the
command and the recipe that reproduce it (`wsss pretrain`, docs/pretraining.md). A file is
verified against its sha256 every time it is resolved.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from wsss.engine.checkpoint import CheckpointError

WEIGHTS_DIR = Path(__file__).resolve().parent
INDEX = WEIGHTS_DIR / "index.json"
# The name `model.pretrained` (and `segnet.pretrained`) takes for the shipped weights.
SYNTHETIC = "synthetic"


class WeightsError(CheckpointError):
    """Shipped weights that are missing, corrupt or made for another backbone; names the file."""


def shipped_index() -> dict[str, dict[str, Any]]:
    """backbone name → {"file", "sha256", "command", ...} of every shipped weights file."""
    if not INDEX.is_file():
        return {}
    try:
        return json.loads(INDEX.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{INDEX}: unreadable weights index ({exc})") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_weights(backbone: str) -> Path:
    """The verified path of the shipped weights for `backbone`.

    Raises:
        WeightsError: no shipped weights for this backbone, file missing, or sha256 mismatch
            (one line naming the file).
    """
    index = shipped_index()
    entry = index.get(backbone)
    if entry is None:
        have = ", ".join(sorted(index)) or "none"
        raise WeightsError(f"model.pretrained={SYNTHETIC}: no shipped weights for backbone "
                           f"{backbone!r} (shipped: {have}); train them with `wsss pretrain`")
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise WeightsError(f"model.pretrained={SYNTHETIC}: shipped weights file missing: {path}")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise WeightsError(f"{path}: sha256 {actual[:12]}… does not match "
                           f"{entry['sha256'][:12]}… in {INDEX.name}; the weights file is "
                           "corrupt or was replaced")
    return path


def install_weights(source: Path, backbone: str, record: dict[str, Any]) -> Path:
    """Copy an exported weights file into the package and list it in `index.json`.

    Args:
        source: a file written by the `export` stage of `wsss pretrain`.
        record: what to store beside the file name and sha256 (command, recipe, scores).
    Returns:
        the installed path.
    """
    from wsss.io import write_bytes, write_text

    target = WEIGHTS_DIR / source.name
    data = source.read_bytes()
    write_bytes(target, data)
    index = shipped_index()
    index[backbone] = {"file": target.name, "sha256": hashlib.sha256(data).hexdigest(), **record}
    write_text(INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return target
