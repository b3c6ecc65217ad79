"""Formatting shared by the Markdown, HTML and comparison renderers (standard library only)."""
from __future__ import annotations

import math
from typing import Any

DASH = "–"


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []

def _num(value: Any) -> float | None:
    # bool is an int subclass: a stray true/false must not be rendered as 1/0.
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    number = _num(value)
    if number is None:
        return DASH if value is None or value == "" else str(value)
    return f"{number:.{digits}f}{suffix}"


def _quality_digits(quality: dict) -> int:
    # Cosine-like scores sit in [0, 1], where the 3rd/4th decimal is the signal;
    # percent-scale scores (e.g. Spearman x100) would only show noise at 4 decimals.
    for key in ("value", "fp32_value", "delta"):
        number = _num(quality.get(key))
        if number is not None:
            return 4 if abs(number) <= 1 else 2
    return 4


def _fmt_quality(quality: Any) -> str:
    if not isinstance(quality, dict):
        return DASH
    digits = _quality_digits(quality)
    text = _fmt(quality.get("value"), digits)
    delta = _num(quality.get("delta"))
    if delta is not None:
        text += f" (Δ {delta:+.{digits}f})"
    return text


def _qualities(row: dict) -> dict[str, dict]:
    # Older reports carry only the primary `quality`; newer ones list all of them in
    # `qualities`. Merge both so neither source is lost; the first mention wins.
    found: dict[str, dict] = {}
    for quality in _list(row.get("qualities")) + [row.get("quality")]:
        if isinstance(quality, dict) and quality.get("metric") is not None:
            found.setdefault(str(quality["metric"]), quality)
    return found


def _noisy(row: dict) -> str:
    if not row.get("noisy"):
        return ""
    cv = _num(row.get("cv"))
    return f"⚠ cv {cv * 100:.0f}%" if cv is not None else "⚠ noisy"


def _shape_key(shape: tuple) -> tuple:
    # Missing batch/seq_len must still sort deterministically (after the known ones).
    return tuple((_num(part) is None, _num(part) or 0.0, str(part)) for part in shape)


def _groups(results: list) -> list[tuple[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        if isinstance(row, dict):
            # str() keeps a malformed (unhashable) batch or seq_len from breaking grouping.
            shape = tuple(v if isinstance(v, (int, float, str, type(None))) else str(v)
                          for v in (row.get("batch"), row.get("seq_len")))
            groups.setdefault(shape, []).append(row)
    return sorted(groups.items(), key=lambda item: _shape_key(item[0]))


def _concurrent(row: dict) -> str:
    """Items/s under concurrent streams, and its ratio to PyTorch fp32 measured the same way."""
    data = row.get("concurrent")
    if not isinstance(data, dict):
        return DASH
    text = _fmt(data.get("items_per_s"), 1)
    ratio = _num(data.get("speedup_vs_fp32"))
    return text + (f" ({ratio:.2f}×)" if ratio is not None else "")
