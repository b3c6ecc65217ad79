"""Formatting shared by the Markdown, HTML and comparison renderers, the terminal table and the package README
(standard library only). Rows and qualities are the typed ones of `model`; their measurement dicts may still hold
anything a hand-edited report put there, so every number goes through `_num`."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

from .model import Quality, Report, Row

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


def _quality_digits(quality: Quality) -> int:
    # Cosine-like scores sit in [0, 1], where the 3rd/4th decimal is the signal;
    # percent-scale scores (e.g. Spearman x100) would only show noise at 4 decimals; perplexities sit between.
    for value in (quality.value, quality.fp32_value, quality.delta):
        number = _num(value)
        if number is not None:
            return 4 if abs(number) <= 1 else 3 if abs(number) < 10 else 2
    return 4


def _fmt_quality(quality: Any) -> str:
    if not isinstance(quality, Quality):
        return DASH
    digits = _quality_digits(quality)
    text = _fmt(quality.value, digits)
    delta = _num(quality.delta)
    if delta is not None:
        text += f" (Δ {delta:+.{digits}f})"
    return text


def _qualities(row: Row) -> dict[str, Quality]:
    # Older reports carry only the primary `quality`; newer ones list all of them in
    # `qualities`. Merge both so neither source is lost; the first mention wins.
    found: dict[str, Quality] = {}
    for quality in _list(row.qualities) + [row.quality]:
        if isinstance(quality, Quality) and quality.metric is not None:
            found.setdefault(str(quality.metric), quality)
    return found


def _noisy(row: Row) -> str:
    if not row.noisy:
        return ""
    cv = _num(row.cv)
    return f"⚠ cv {cv * 100:.0f}%" if cv is not None else "⚠ noisy"


def _shape_key(shape: tuple) -> tuple:
    # Missing batch/seq_len must still sort deterministically (after the known ones).
    return tuple((_num(part) is None, _num(part) or 0.0, str(part)) for part in shape)


def machine_labels(report: Report) -> Report:
    """A run over several machine types has each variant once per type: name the type beside the variant."""
    rows = report.results
    if len({str(r.machine) for r in rows}) <= 1:
        return report
    return replace(report, results=[replace(r, variant=f"{r.variant} @ {r.machine}") for r in rows])


def _row_shape(row: Row) -> tuple:
    return row.batch, row.seq_len


def _groups(results: list, shape: Callable[[Any], tuple] = _row_shape) -> list[tuple[tuple, list]]:
    """Rows by (batch, seq_len), sorted; `shape` reads them from something other than a Row (compare's rows)."""
    groups: dict[tuple, list] = {}
    for row in results:
        # str() keeps a malformed (unhashable) batch or seq_len from breaking grouping.
        key = tuple(v if isinstance(v, (int, float, str, type(None))) else str(v) for v in shape(row))
        groups.setdefault(key, []).append(row)
    return sorted(groups.items(), key=lambda item: _shape_key(item[0]))


def _concurrent(row: Row) -> str:
    """Items/s under concurrent streams, and its ratio to PyTorch fp32 measured the same way."""
    data = row.concurrent
    if not isinstance(data, dict):
        return DASH
    text = _fmt(data.get("items_per_s"), 1)
    ratio = _num(data.get("speedup_vs_fp32"))
    return text + (f" ({ratio:.2f}×)" if ratio is not None else "")


def _timings(rows: list) -> list[str]:
    """Timings measured beside the model-only one (e.g. end-to-end), in the order rows first mention them."""
    names: list[str] = []
    for row in rows:
        timings = row.timings
        for name in timings if isinstance(timings, dict) else {}:
            if name not in names:
                names.append(str(name))
    return names


def _timing_cell(row: Row, name: str) -> str:
    """p50 of another timing, and its ratio to PyTorch fp32 timed the same way."""
    timings = row.timings
    data = timings.get(name) if isinstance(timings, dict) else None
    if not isinstance(data, dict):
        return DASH
    latency = data.get("latency_ms") if isinstance(data.get("latency_ms"), dict) else {}
    ratio = _num(data.get("speedup_vs_fp32"))
    return _fmt(latency.get("p50")) + (f" ({ratio:.2f}×)" if ratio is not None else "")


def _what_was_timed(results: list) -> list[tuple[str, str, str]]:
    """(column, runtimes, what) for every distinct thing the rows timed: each number says what it measured."""
    found: dict[tuple[str, str], list[str]] = {}

    def note(column: str, what, runtime) -> None:
        if isinstance(what, str) and what:
            runtimes = found.setdefault((column, what), [])
            if str(runtime) not in runtimes:
                runtimes.append(str(runtime))

    for row in results:
        note("p50/p90/p99 ms, throughput/s", row.what, row.runtime)
        timings = row.timings if isinstance(row.timings, dict) else {}
        for name, data in timings.items():
            note(f"{name} p50 ms", data.get("what") if isinstance(data, dict) else None, row.runtime)
        concurrent = row.concurrent if isinstance(row.concurrent, dict) else {}
        note("concurrent/s", concurrent.get("what"), row.runtime)
    return [(column, ", ".join(runtimes), what) for (column, what), runtimes in found.items()]


GENERATION_COLUMNS = ["variant", "runtime", "batch", "prompt", "new tokens", "TTFT ms", "prefill tok/s",
                      "decode tok/s", "decode speed-up"]


def _generation_rows(results: list) -> list[list[str]]:
    """One row per variant, runtime and batch that has a generation measurement (text-generation runs)."""
    rows = []
    for row in results:
        gen = row.generation
        if not isinstance(gen, dict):
            continue
        rows.append([str(row.variant), str(row.runtime), str(gen.get("batch")),
                     str(gen.get("prompt_len")), str(gen.get("new_tokens")), _fmt(gen.get("ttft_ms")),
                     _fmt(gen.get("prefill_tokens_per_s"), 1), _fmt(gen.get("decode_tokens_per_s"), 1),
                     _fmt(gen.get("decode_speedup_vs_fp32"), 2, "×")])
    return rows


def _quality_matrix(results: list) -> tuple[list[str], list[tuple[str, str]], dict]:
    """Metrics x variants, as the papers print them: each variant's quality on the first runtime it ran on (quality
    does not depend on the batch size). Returns (metrics, [(variant, runtime)], {(metric, variant): quality})."""
    metrics: list[str] = []
    columns: list[tuple[str, str]] = []
    cells: dict = {}
    for row in results:
        if any(v == row.variant for v, _ in columns):
            continue
        columns.append((str(row.variant), str(row.runtime)))
        for metric, quality in _qualities(row).items():
            if metric not in metrics:
                metrics.append(metric)
            cells[(metric, str(row.variant))] = quality
    return metrics, columns, cells


def _lower_is_better(quality: Quality) -> bool:
    """Perplexity-like metrics. The pipeline signs `gain` against `delta` for them; older reports only have a name."""
    gain, delta = _num(quality.gain), _num(quality.delta)
    if gain is not None and delta:
        return gain * delta < 0
    name = str(quality.metric or "").lower()
    return name == "kl" or any(word in name for word in ("perplexity", "loss", "error"))


def _quality_unit(qualities: list) -> tuple[float, str]:
    """(factor, unit) that state one metric's numbers in its own units: a 0..1 score moves in points (x100), so a
    delta of -0.001 reads as -0.1 point; scores already x100 and perplexities stay as they are."""
    found = [q for q in _list(qualities) if isinstance(q, Quality)]
    scales = {q.scale for q in found if q.scale}
    if scales:  # reports since the scale is recorded say it; older ones are read from the values
        return (100.0, "pt") if scales == {"unit"} else (1.0, "")
    values = [v for q in found for v in (_num(q.value), _num(q.fp32_value)) if v is not None]
    if values and not any(_lower_is_better(q) for q in found) and all(0.0 <= v <= 1.0 for v in values):
        return 100.0, "pt"
    return 1.0, ""


def _pair(value: Any) -> tuple[float, float] | None:
    """A [low, high] interval, or None when absent or malformed."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = _num(value[0]), _num(value[1])
        if low is not None and high is not None:
            return (low, high) if low <= high else (high, low)
    return None


def _delta_interval(quality: Quality) -> tuple[float, float] | None:
    """The 95 % interval of a quality delta: only the paired one (same items, fp32 and variant). The variant's own
    interval shifted by the fp32 value would be wider and, for the baseline against itself, meaningless."""
    return _pair(quality.delta_interval)


def _fmt_delta(quality: Quality, factor: float, unit: str) -> str:
    """'Δ -0.10 pt (-0.40 to +0.20)' in the metric's own units; empty without a delta."""
    delta = _num(quality.delta)
    if delta is None:
        return ""
    digits = 2 if factor != 1.0 else _quality_digits(quality)
    unit = f" {unit}" if unit else ""
    text = f"Δ {delta * factor:+.{digits}f}{unit}"
    interval = _delta_interval(quality)
    if interval is not None:
        text += f" ({interval[0] * factor:+.{digits}f} to {interval[1] * factor:+.{digits}f})"
    return text


def _fmt_interval(interval: Any, digits: int = 2, suffix: str = "") -> str:
    """'1.39–1.55'; empty when absent or a single number (the baseline against itself tells nothing)."""
    pair = _pair(interval)
    if pair is None or f"{pair[0]:.{digits}f}" == f"{pair[1]:.{digits}f}":
        return ""
    return f"{pair[0]:.{digits}f}–{pair[1]:.{digits}f}{suffix}"


def speedup_text(speedup: Any, interval: Any, mark: str = "x", dash: str = "-", against: str = "",
                 missing: str = "-") -> str:
    """A speed-up with its 95 % interval: '1.47x (1.39-1.55)', or with `against` between them:
    '1.47x PyTorch fp32 (1.39-1.55)'. The one spelling the terminal, package README and recommendation share."""
    speed, interval = _num(speedup), _pair(interval)
    if not speed:
        return missing
    text = f"{speed:.2f}{mark}" + (f" {against}" if against else "")
    return text + (f" ({interval[0]:.2f}{dash}{interval[1]:.2f})" if interval else "")


def plan_lines(variants: Any) -> list[str]:
    """One line per variant that carried a layer plan (its summary, and how it differs from another variant of its
    method), from the strings the run wrote into report.json's variants."""
    lines = []
    for record in _list(variants):
        if isinstance(record, dict) and isinstance(record.get("plan_summary"), str):
            lines.append(f"{record.get('name')} ({record.get('format')}): {record['plan_summary']}"
                         + (f"; {record['plan_differences']}" if isinstance(record.get("plan_differences"), str)
                            else ""))
    return lines
