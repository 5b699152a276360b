"""Methods: each module registers itself under its own name in `METHODS`."""

from __future__ import annotations

from typing import Any

from wsss.registry import Registry

METHODS = Registry("method")


def build_method(cfg: Any) -> Any:
    """The method named by `cfg.method.name`, built from the whole run config."""
    return METHODS.get(cfg.method.name)(cfg)


# Importing the modules registers them.
from wsss.methods import cam_baseline  # noqa: E402,F401
from wsss.methods import one_stage  # noqa: E402,F401
from wsss.methods import amn  # noqa: E402,F401
