"""Atomic, hash-checked checkpoints: `torch.save` to memory, sha256 inside the file, `os.replace`.

The digest travels inside the checkpoint, in the comment of the zip archive `torch.save` writes
(`wsss-sha256:<hex>`, the sha256 of the archive with an empty comment). The file stays a plain
`torch.load`-able archive, and a copy without any side-car file is still verified. Checkpoints of
earlier versions carry their digest in a `<file>.sha256` side-car, which is still honoured.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.io import write_bytes

_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes + comment
_EOCD_SIZE = 22
_DIGEST_MARK = b"wsss-sha256:"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit the model; names the file."""


def with_digest(data: bytes) -> bytes:
    """`torch.save` bytes (a zip archive without comment) with their sha256 as the zip comment."""
    if len(data) < _EOCD_SIZE or data[-_EOCD_SIZE:-_EOCD_SIZE + 4] != _EOCD \
            or data[-2:] != b"\x00\x00":
        raise ValueError("not a torch.save zip archive without a comment")
    comment = _DIGEST_MARK + hashlib.sha256(data).hexdigest().encode()
    return data[:-2] + struct.pack("<H", len(comment)) + comment


def embedded_digest(data: bytes) -> tuple[str, str] | None:
    """(stored digest, digest of the content) of a checkpoint written by `with_digest`, or None
    when the file carries no digest (an older checkpoint, or a foreign file)."""
    start = data.rfind(_EOCD, max(0, len(data) - _EOCD_SIZE - 65535))
    if start < 0 or start + _EOCD_SIZE > len(data):
        return None
    (length,) = struct.unpack("<H", data[start + 20:start + 22])
    comment = data[start + _EOCD_SIZE:]
    if length != len(comment) or not comment.startswith(_DIGEST_MARK):
        return None
    stored = comment[len(_DIGEST_MARK):].decode("ascii", "replace")
    content = hashlib.sha256(memoryview(data)[:start + 20])  # no copy of a large file
    content.update(b"\x00\x00")
    return stored, content.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically, its sha256 inside the file (`with_digest`).

    A side-car `path.sha256` of an earlier version is removed after the new file is in place
    (a process killed in between leaves a file whose embedded digest wins over the side-car).
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    write_bytes(path, with_digest(buffer.getvalue()))
    _digest_path(path).unlink(missing_ok=True)


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _listed_digests(digest_file: Path) -> list[str]:
    if not digest_file.is_file():
        return []
    return [line.strip() for line in digest_file.read_text().splitlines() if line.strip()]


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    allow_unverified: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, verifying its sha256.

    The digest inside the file is checked; a file without one is checked against its
    `.sha256` side-car (checkpoints of earlier versions). A file with neither is refused
    unless `allow_unverified`.

    Raises:
        CheckpointError: missing file, digest mismatch (corrupt or edited), no digest at all,
            unreadable data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    embedded = embedded_digest(data)
    digest_file = _digest_path(path)
    if embedded is not None:
        if embedded[0] != embedded[1]:
            raise CheckpointError(
                f"{path}: sha256 does not match the digest stored in the file; the checkpoint "
                "is corrupt or was modified, refusing to load it"
            )
    elif digest_file.is_file():
        if hashlib.sha256(data).hexdigest() not in _listed_digests(digest_file):
            raise CheckpointError(
                f"{path}: sha256 does not match {digest_file.name}; the checkpoint is corrupt "
                "or was modified, refusing to load it"
            )
    elif not allow_unverified:
        raise CheckpointError(
            f"{path}: the checkpoint carries no sha256 (none inside, no {digest_file.name} "
            "beside it), so corruption cannot be detected; refusing to load it (allow it with "
            "--allow-unverified, or load_checkpoint(..., allow_unverified=True))"
        )
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU and CUDA) RNG states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly, naming the checkpoint and the mismatching keys on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: checkpoint does not fit the model (another backbone or number of "
            f"classes?): missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"shape mismatch {wrong[:4]}"
        )
    model.load_state_dict(state)


def load_submodule_state(module: torch.nn.Module, path: str | Path, prefix: str = "backbone."
                         ) -> None:
    """Load the `prefix`-ed entries of the trained model saved at `path` into `module` (e.g. a
    CAM network's backbone into AMN, IRNet or AffinityNet), strictly, naming the file on a
    mismatch."""
    state = load_checkpoint(path, map_location="cpu")["model"]
    load_model_state(module, {k[len(prefix):]: v for k, v in state.items()
                              if k.startswith(prefix)}, str(path))
