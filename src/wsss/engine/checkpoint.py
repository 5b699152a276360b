"""Atomic, hash-checked checkpoints: `torch.save` to memory, sha256 sidecar, `os.replace`."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.io import write_bytes, write_text


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit the model; names the file."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` and its sha256 to `path.sha256`, each atomically.

    Two files cannot be replaced at once, so the digest file lists every digest the checkpoint
    may have while it is being replaced: first the old digests plus the new one, then the
    checkpoint, then the new digest alone. A process killed at any point leaves a checkpoint
    (old or new) whose digest is listed; a corrupt or edited file matches none.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = Path(path)
    digest_file = _digest_path(path)
    digest = hashlib.sha256(data).hexdigest()
    previous = _listed_digests(digest_file)
    if previous and previous != [digest]:
        write_text(digest_file, "".join(d + "\n" for d in [*previous, digest]))
    write_bytes(path, data)
    write_text(digest_file, digest + "\n")


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _listed_digests(digest_file: Path) -> list[str]:
    if not digest_file.is_file():
        return []
    return [line.strip() for line in digest_file.read_text().splitlines() if line.strip()]


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, verifying its sha256 when present.

    Raises:
        CheckpointError: missing file, digest mismatch (corrupt or edited), unreadable data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    digest_file = _digest_path(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest_file.is_file() and digest not in _listed_digests(digest_file):
        raise CheckpointError(
            f"{path}: sha256 does not match {digest_file.name}; the checkpoint is corrupt "
            "or was modified, refusing to load it"
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
