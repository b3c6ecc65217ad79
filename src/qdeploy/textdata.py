"""Streaming readers for text data (calibration and evaluation share them); nothing reads a whole file at once.

Sources: `builtin`, text/TSV/CSV/JSONL/Parquet files, `FILE:COLUMN`, and `hf:NAME[:CONFIG][:SPLIT][:COLUMN]` (a
Hugging Face dataset read with `datasets` in streaming mode).
"""
from __future__ import annotations

import csv
import json
import random
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError, UnsupportedError

BUILTIN = "builtin"
HUB_PREFIX = "hf:"
PARQUET_ROWS_PER_BATCH = 1024  # rows decoded at a time: memory stays at one batch of the chosen columns


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


def _parquet_rows(path: Path, columns: list[str] | None = None) -> Iterator[dict]:
    """Rows of a Parquet file, decoded a batch at a time and only for `columns` (all when None)."""
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UnsupportedError("Parquet data needs pyarrow: pip install 'qdeploy[full]'") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) or OSError for a file that is not Parquet
        raise InputError(f"{path} is not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    with parquet:
        names = parquet.schema_arrow.names
        missing = [c for c in columns or () if c not in names]
        if missing:
            raise InputError(f"{path} has no column {missing[0]!r}; columns: {', '.join(names)}")
        for batch in parquet.iter_batches(batch_size=PARQUET_ROWS_PER_BATCH, columns=columns):
            yield from batch.to_pylist()


def iter_rows(path: str | Path, columns: list[str] | None = None) -> Iterator[dict[str, str]]:
    """Rows of a .tsv/.csv (with header), .jsonl, .parquet, or plain text file (one `text` per line).

    `columns` is a hint: Parquet decodes only those; the text formats parse whole lines anyway."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(path, columns)
        return
    fh = _open_text(path)
    with fh:
        if suffix in (".tsv", ".csv"):
            tsv = suffix == ".tsv"
            reader = csv.DictReader(fh, delimiter="\t" if tsv else ",",
                                    quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
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
    """Texts from `builtin`, a file, `FILE:COLUMN`, or `hf:NAME[:CONFIG][:SPLIT][:COLUMN]`."""
    if spec.startswith(HUB_PREFIX):
        rows, where = hub_rows(spec)
        column = parse_hub_spec(spec)[3]
    else:
        if spec == BUILTIN:
            spec = str(builtin_path("calibration.txt"))
        path = Path(spec)
        if not path.exists() and ":" in spec:
            spec, column = spec.rsplit(":", 1)
            path = Path(spec)
        rows, where = iter_rows(path, [column] if column else None), str(path)
    found = False
    for row in rows:
        key = column or _text_column(row)
        if key not in row:
            raise InputError(f"{where} has no column {key!r}; columns: {', '.join(map(str, row))}")
        text = row[key]
        if isinstance(text, str) and text.strip():
            found = True
            yield text
    if not found:
        raise InputError(f"{where} holds no text samples")


def parse_hub_spec(spec: str) -> tuple[str, str | None, str, str | None]:
    """`hf:NAME[:CONFIG][:SPLIT][:COLUMN]` -> (name, config, split, column); an empty field takes its default
    (`hf:imdb::test:text` has no config). Fields are positional, so a split needs a config field before it."""
    fields = spec[len(HUB_PREFIX):].split(":")
    if not fields[0] or len(fields) > 4:
        raise InputError(f"bad dataset spec {spec!r}: expected hf:NAME[:CONFIG][:SPLIT][:COLUMN]")
    name, config, split, column = (fields + [""] * 3)[:4]
    return name, config or None, split or "train", column or None


def hub_rows(spec: str) -> tuple[Iterator[dict], str]:
    """Rows of a Hugging Face dataset, streamed (nothing downloaded in full); NAME may also be a local folder."""
    try:
        import datasets
    except ImportError:
        raise UnsupportedError(f"{spec} needs the datasets library: pip install 'qdeploy[generation]'") from None
    name, config, split, column = parse_hub_spec(spec)
    where = f"dataset {name}" + (f" ({config})" if config else "") + f", split {split}"

    def failed(exc: Exception) -> InputError:
        if isinstance(exc, ConnectionError) or "offline" in str(exc).lower():
            return InputError(f"{where}: the Hugging Face hub is unreachable (offline); use a local file instead")
        return InputError(f"{where} could not be read: {(str(exc).splitlines() or [type(exc).__name__])[0]}")

    def rows() -> Iterator[dict]:
        datasets.logging.set_verbosity_error()
        try:
            stream = datasets.load_dataset(name, config, split=split, streaming=True)
            if column is not None and stream.column_names is not None and column in stream.column_names:
                stream = stream.select_columns([column])  # the other columns are never decoded
            yield from stream
        except (ConnectionError, OSError, ValueError, KeyError) as exc:  # datasets' errors subclass these
            raise failed(exc) from None

    return rows(), where


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
