"""The finished cells of a run, one small file each, so an interrupted run resumes without recomputing them.

A cell file is written to a temporary name and renamed: it exists complete or not at all.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

PLAN_FILE = "plan.json"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


class CellStore:
    def __init__(self, out: Path):
        self.root = Path(out) / "cells"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, name: str, suffix: str = ".json") -> Path:
        return self.root / f"{kind}-{_safe(name)}{suffix}"

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        path = self._path(kind, name)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def put(self, kind: str, name: str, record: dict[str, Any]) -> None:
        path = self._path(kind, name)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)

    def drop(self, kind: str, name: str) -> None:
        self._path(kind, name).unlink(missing_ok=True)

    def get_array(self, kind: str, name: str) -> np.ndarray | None:
        path = self._path(kind, name, ".npy")
        return np.load(path) if path.is_file() else None

    def put_array(self, kind: str, name: str, array: np.ndarray) -> None:
        path = self._path(kind, name, ".npy")
        tmp = path.with_name(path.name + ".part.npy")
        np.save(tmp, array)
        os.replace(tmp, path)


def remove_stale_staging(artifacts: Path) -> list[str]:
    """A killed run leaves `.tmp-*` staging directories; they were never complete, so they go."""
    removed = []
    if artifacts.is_dir():
        for path in artifacts.iterdir():
            if path.name.startswith(".tmp-") and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed
