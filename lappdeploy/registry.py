"""Name -> object registries for models, datasets, methods and runtimes (torchvision/timm style).

Duplicate names raise, unknown names raise with close matches, and a registry may be filled lazily
by a loader (so `import lappdeploy` does not import torchvision just to list its models).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lappdeploy.errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")
_MAX_NAMES_IN_ERROR = 12  # beyond this, an error points to `lappdeploy list` instead of listing them all


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind  # e.g. "model"; used in error messages
        self._entries: dict[str, T] = {}
        self._loaders: list[Callable[[Registry[T]], None]] = []

    def add_loader(self, loader: Callable[[Registry[T]], None]) -> None:
        """Run `loader(self)` once, the first time the registry is queried."""
        self._loaders.append(loader)

    def _load(self) -> None:
        while self._loaders:
            self._loaders.pop(0)(self)

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Unregister `name` (for entries registered for a while, e.g. by a test); returns the entry."""
        self._load()
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        if close:
            hint = f"did you mean {', '.join(close)}?"
        elif len(names) <= _MAX_NAMES_IN_ERROR:
            hint = f"valid names: {', '.join(names)}"
        else:
            hint = f"no close match among {len(names)} {self.kind}s"
        return f"unknown {self.kind} {name!r}; {hint} (`lappdeploy list {self.kind}s` lists all)"

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
