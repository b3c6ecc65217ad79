"""One registry helper for runtimes, methods, tasks and metrics: adding one is a registration, not an if-chain."""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        """`modules` register the built-in entries when imported; imported on first lookup, so that
        `import qdeploy` does not pull in torch, ONNX Runtime or OpenVINO."""
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules = modules
        self._loaded = not modules

    def load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        self.load()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._items

    def __iter__(self) -> Iterator[tuple[str, T]]:
        self.load()
        return iter(sorted(self._items.items()))
