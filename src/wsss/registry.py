"""Small name -> builder registries (datasets, backbones, methods, refiners)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """A dict from lowercase names to builders; duplicate or unknown names raise.

    Example:
        >>> BACKBONES = Registry("backbone")
        >>> @BACKBONES.register("resnet50")
        ... def resnet50(**kw): ...
        >>> BACKBONES.get("resnet50")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
