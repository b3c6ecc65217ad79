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
    # percent-scale scores (e.g. Spearman x100) would only show noise at 4 decimals; perplexities sit between.
    for key in ("value", "fp32_value", "delta"):
        number = _num(quality.get(key))
        if number is not None:
            return 4 if abs(number) <= 1 else 3 if abs(number) < 10 else 2
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


def machine_labels(report: dict) -> dict:
    """A run over several machine types has each variant once per type: name the type beside the variant."""
    rows = [r for r in report.get("results") or [] if isinstance(r, dict)]
    if len({str(r.get("machine")) for r in rows}) <= 1:
        return report
    return {**report, "results": [{**r, "variant": f"{r.get('variant')} @ {r.get('machine')}"} for r in rows]}


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


def _timings(rows: list) -> list[str]:
    """Timings measured beside the model-only one (e.g. end-to-end), in the order rows first mention them."""
    names: list[str] = []
    for row in rows:
        timings = row.get("timings") if isinstance(row, dict) else None
        for name in timings if isinstance(timings, dict) else {}:
            if name not in names:
                names.append(str(name))
    return names


def _timing_cell(row: dict, name: str) -> str:
    """p50 of another timing, and its ratio to PyTorch fp32 timed the same way."""
    timings = row.get("timings")
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
        if not isinstance(row, dict):
            continue
        note("p50/p90/p99 ms, throughput/s", row.get("what"), row.get("runtime"))
        timings = row.get("timings") if isinstance(row.get("timings"), dict) else {}
        for name, data in timings.items():
            note(f"{name} p50 ms", data.get("what") if isinstance(data, dict) else None, row.get("runtime"))
        concurrent = row.get("concurrent") if isinstance(row.get("concurrent"), dict) else {}
        note("concurrent/s", concurrent.get("what"), row.get("runtime"))
    return [(column, ", ".join(runtimes), what) for (column, what), runtimes in found.items()]


GENERATION_COLUMNS = ["variant", "runtime", "batch", "prompt", "new tokens", "TTFT ms", "prefill tok/s",
                      "decode tok/s", "decode speed-up"]


def _generation_rows(results: list) -> list[list[str]]:
    """One row per variant, runtime and batch that has a generation measurement (text-generation runs)."""
    rows = []
    for row in _list(results):
        gen = row.get("generation") if isinstance(row, dict) else None
        if not isinstance(gen, dict):
            continue
        rows.append([str(row.get("variant")), str(row.get("runtime")), str(gen.get("batch")),
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
    for row in _list(results):
        if not isinstance(row, dict) or any(v == row.get("variant") for v, _ in columns):
            continue
        columns.append((str(row.get("variant")), str(row.get("runtime"))))
        for metric, quality in _qualities(row).items():
            if metric not in metrics:
                metrics.append(metric)
            cells[(metric, str(row.get("variant")))] = quality
    return metrics, columns, cells


def _lower_is_better(quality: dict) -> bool:
    """Perplexity-like metrics. The pipeline signs `gain` against `delta` for them; older reports only have a name."""
    gain, delta = _num(quality.get("gain")), _num(quality.get("delta"))
    if gain is not None and delta:
        return gain * delta < 0
    name = str(quality.get("metric") or "").lower()
    return name == "kl" or any(word in name for word in ("perplexity", "loss", "error"))


def _quality_unit(qualities: list) -> tuple[float, str]:
    """(factor, unit) that state one metric's numbers in its own units: a 0..1 score moves in points (x100), so a
    delta of -0.001 reads as -0.1 point; scores already x100 and perplexities stay as they are."""
    found = [q for q in _list(qualities) if isinstance(q, dict)]
    scales = {q.get("scale") for q in found if q.get("scale")}
    if scales:  # reports since the scale is recorded say it; older ones are read from the values
        return (100.0, "pt") if scales == {"unit"} else (1.0, "")
    values = [v for q in found for v in (_num(q.get("value")), _num(q.get("fp32_value"))) if v is not None]
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


def _delta_interval(quality: dict) -> tuple[float, float] | None:
    """The 95 % interval of a quality delta: only the paired one (same items, fp32 and variant). The variant's own
    interval shifted by the fp32 value would be wider and, for the baseline against itself, meaningless."""
    paired = quality.get("paired") if isinstance(quality.get("paired"), dict) else {}
    return _pair([paired.get("low"), paired.get("high")])


def _fmt_delta(quality: dict, factor: float, unit: str) -> str:
    """'Δ -0.10 pt (-0.40 to +0.20)' in the metric's own units; empty without a delta."""
    delta = _num(quality.get("delta"))
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


def speedup_text(row: dict, mark: str = "x", dash: str = "-", against: str = "", missing: str = "-") -> str:
    """A row's speed-up with its 95 % interval: '1.47x (1.39-1.55)', or with `against` between them:
    '1.47x PyTorch fp32 (1.39-1.55)'. The one spelling the terminal, package README and recommendation share."""
    speed, interval = _num(row.get("speedup_vs_fp32")), _pair(row.get("speedup_interval"))
    if not speed:
        return missing
    text = f"{speed:.2f}{mark}" + (f" {against}" if against else "")
    return text + (f" ({interval[0]:.2f}{dash}{interval[1]:.2f})" if interval else "")
