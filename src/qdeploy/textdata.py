"""Streaming readers for text data (calibration and evaluation share them); nothing reads a whole file at once."""
from __future__ import annotations

import csv
import json
import random
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

BUILTIN = "builtin"


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("qdeploy") / "data" / name))


def _open_text(path: Path):
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    return open(path, encoding="utf-8", newline="")


def _guard_utf8(rows: Iterable, path: Path) -> Iterator:
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def iter_rows(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a .tsv/.csv (with header), .jsonl, or plain text file (one `text` per line)."""
    path = Path(path)
    suffix = path.suffix.lower()
    fh = _open_text(path)
    with fh:
        if suffix in (".tsv", ".csv"):
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",", quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            yield from _guard_utf8(reader, path)
        elif suffix in (".jsonl", ".json"):
            for number, line in enumerate(_guard_utf8(fh, path), 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        raise InputError(f"{path}:{number} is not a JSON object") from None
                    if not isinstance(row, dict):
                        raise InputError(f"{path}:{number} is not a JSON object")
                    yield row
        else:
            for line in _guard_utf8(fh, path):
                if line.strip():
                    yield {"text": line.rstrip("\r\n")}


def iter_texts(spec: str, column: str | None = None) -> Iterator[str]:
    """Texts from `builtin`, a file, or `FILE:COLUMN`."""
    if spec == BUILTIN:
        spec = str(builtin_path("calibration.txt"))
    path = Path(spec)
    if not path.exists() and ":" in spec:
        spec, column = spec.rsplit(":", 1)
        path = Path(spec)
    found = False
    for row in iter_rows(path):
        key = column or _text_column(row)
        if key not in row:
            raise InputError(f"{path} has no column {key!r}; columns: {', '.join(map(str, row))}")
        text = row[key]
        if isinstance(text, str) and text.strip():
            found = True
            yield text
    if not found:
        raise InputError(f"{path} holds no text samples")


def _text_column(row: dict) -> str:
    for key in ("text", "sentence", "sentence1", "content"):
        if key in row:
            return key
    return next(iter(row))


def sample(texts: Iterable[str], count: int, seed: int) -> list[str]:
    """Seeded reservoir sample: memory stays at `count` texts however long the stream is."""
    rng = random.Random(seed)
    chosen: list[str] = []
    for index, text in enumerate(texts):
        if index < count:
            chosen.append(text)
        else:
            slot = rng.randint(0, index)
            if slot < count:
                chosen[slot] = text
    return chosen
