"""How long work reports progress without printing: the CLI supplies a `Progress`, libraries only call it."""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def stage(self, name: str, total: int) -> None: ...

    def advance(self, message: str = "") -> None: ...

    def log(self, message: str) -> None: ...


class Silent:
    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, message: str = "") -> None:
        pass

    def log(self, message: str) -> None:
        pass
