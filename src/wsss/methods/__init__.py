"""Methods: each module registers itself under its own name in `METHODS`."""

from __future__ import annotations

from typing import Any

from wsss.registry import Registry

METHODS = Registry("method")


def build_method(cfg: Any) -> Any:
    """The method named by `cfg.method.name`, built from the whole run config."""
    return METHODS.get(cfg.method.name)(cfg)


def _import_all() -> None:
    """Import every module of this package, so a new method is one new file that registers
    itself (nothing else to edit)."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
