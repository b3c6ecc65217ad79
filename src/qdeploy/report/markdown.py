"""Render a qdeploy report (schema ``qdeploy.report/1``) as GitHub-flavoured Markdown.

Standard library only and no imports from the rest of ``qdeploy`` so that a report
can be rendered on a machine without the heavy runtimes installed. Older or partial
reports may miss any optional key, so every lookup tolerates absence or ``None``.
"""
from __future__ import annotations

from typing import Any

from .formatting import (DASH, GENERATION_COLUMNS, _concurrent, _fmt, _fmt_quality, _generation_rows, _groups,
                         _noisy, _num, _qualities, _quality_matrix, _timing_cell, _timings, _what_was_timed,
                         machine_labels, plan_lines, speedup_text)
from .model import Quality, Report, Row, as_report

_FIXED_COLUMNS = ["variant", "runtime", "precision", "p50 ms", "p90 ms", "p99 ms",
                  "throughput/s", "speed-up", "vs runtime fp32", "concurrent/s", "size MB", "peak RSS MB"]
# Text columns stay left-aligned; everything else is numeric and reads better right-aligned.
_TEXT_COLUMNS = {"variant", "runtime", "precision", "note"}


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _md(value: Any) -> str:
    """Make a report string safe inside a Markdown table cell or list item."""
    if value is None:
        return DASH
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return " ".join(text.splitlines())


def _metrics(rows: list[Row]) -> list[str]:
    metrics: list[str] = []
    for row in rows:
        for metric in _qualities(row):
            if metric not in metrics:
                metrics.append(metric)
    return metrics


def _quality_cell(quality: Any) -> str:
    """Value, its 95 % interval, Δ to fp32 and the paired test's p: what "within tolerance" was judged on."""
    if not isinstance(quality, Quality):
        return DASH
    text = _fmt_quality(quality)
    interval = quality.interval
    if isinstance(interval, list) and len(interval) == 2:
        digits = 4 if abs(_num(quality.value) or 0) <= 1 else 2
        text += f" [{_fmt(interval[0], digits)}, {_fmt(interval[1], digits)}]"
    paired = _dict(quality.paired)
    if _num(paired.get("p")) is not None:
        text += f" p={paired['p']:.2g}"
    if _dict(quality.verdict).get("qualifies") is False:
        text += " ✗"
    return text


def _note(row: Row) -> str:
    notes = [_noisy(row)] if row.noisy and not row.busy_reasons else []
    if row.busy_reasons:
        notes.append("⚠ busy: " + "; ".join(map(str, row.busy_reasons)))
    return " ".join(notes)


def _recommendation(report: Report) -> list[str]:
    recommendation = _dict(report.recommendation)
    choices = [c for c in _list(recommendation.get("choices")) if isinstance(c, dict)]
    if not choices:
        return []
    lines = ["## Recommendation", ""]
    if recommendation.get("judged_on"):
        lines += [f"Judged on {_md(recommendation['judged_on'])} (tolerance {_md(recommendation.get('tolerance'))}); "
                  "speed-ups are medians of per-round ratios from interleaved rounds, with 95 % intervals.", ""]
    for choice in choices:
        where = f"batch {_md(choice.get('batch'))} · seq_len {_md(choice.get('seq_len'))}"
        if len(_dict(report.machines)) > 1:
            where = f"{_md(choice.get('machine'))} · " + where
        lines.append(f"- **{where}: {_md(choice.get('headline'))}**")
        lines += [f"  - {_md(reason)}" for reason in _list(choice.get("reasons"))]
    return lines + [""]


def _row_cells(row: Row, metrics: list[str], timings: list[str]) -> list[str]:
    latency = _dict(row.latency_ms)
    qualities = _qualities(row)
    return [_md(row.variant), _md(row.runtime), _md(row.precision),
            _fmt(latency.get("p50")), _fmt(latency.get("p90")), _fmt(latency.get("p99")),
            _fmt(row.throughput_per_s, 1), speedup_text(row.speedup, row.speedup_interval, "×", "–", missing=DASH),
            _fmt(row.runtime_speedup, 2, "×"), _concurrent(row),
            _fmt(row.size_mb, 1), _fmt(row.peak_rss_mb, 0)] + \
        [_timing_cell(row, timing) for timing in timings] + \
        [_md(_quality_cell(qualities.get(metric))) for metric in metrics] + [_md(_note(row))]


def _table(rows: list[Row]) -> list[str]:
    metrics, timings = _metrics(rows), _timings(rows)
    header = _FIXED_COLUMNS + [f"{_md(t)} p50 ms" for t in timings] + [_md(metric) for metric in metrics] + ["note"]
    align = [":---" if name in _TEXT_COLUMNS else "---:" for name in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_row_cells(row, metrics, timings)) + " |" for row in rows]
    return lines


def _machine(machine: dict) -> list[str]:
    lines = ["## Machine", ""]
    cores = []
    if machine.get("cores_physical") is not None:
        cores.append(f"{_md(machine['cores_physical'])} physical")
    if machine.get("cores_logical") is not None:
        cores.append(f"{_md(machine['cores_logical'])} logical")
    cpu = _md(machine.get("cpu_model") or "unknown CPU")
    if machine.get("cpu_generation"):
        cpu += f" ({_md(machine['cpu_generation'])})"
    if cores:
        cpu += " — " + " / ".join(cores) + " cores"
    if _num(machine.get("memory_gb")) is not None:
        cpu += f", {_fmt(machine['memory_gb'], 1)} GB RAM"
    lines.append(f"- **CPU:** {cpu}")
    flags = [_md(name) for name, on in _dict(machine.get("isa")).items() if on is True]
    lines.append(f"- **ISA:** {', '.join(flags) if flags else 'none of the tracked extensions'}")
    if machine.get("onednn_isa_cap"):
        lines.append(f"- **oneDNN ISA cap:** {_md(machine['onednn_isa_cap'])}")
    for key, label in (("os", "OS"), ("python", "Python")):
        if machine.get(key):
            lines.append(f"- **{label}:** {_md(machine[key])}")
    libraries = [f"{_md(name)} {_md(version)}"
                 for name, version in _dict(machine.get("libraries")).items() if version]
    if libraries:
        lines.append(f"- **Libraries:** {' · '.join(libraries)}")
    providers = [_md(p) for p in _list(machine.get("execution_providers"))]
    if providers:
        lines.append(f"- **ONNX Runtime providers:** {', '.join(providers)}")
    return lines


def _plain(value: Any) -> str:
    """A setting as a person writes it: no Python reprs of lists and dicts."""
    if isinstance(value, dict):
        return "; ".join(f"{k} {_plain(v)}" for k, v in value.items()) or DASH
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value) or DASH
    return _md(value)


def _settings(settings: dict) -> list[str]:
    if not settings:
        return []
    return ["## Settings", ""] + [f"- **{_md(key)}:** {_md(_plain(value))}" for key, value in settings.items()]


def _timed(results: list[Row]) -> list[str]:
    entries = _what_was_timed(results)
    if not entries:
        return []
    return ["## What was timed", ""] + [f"- **{_md(column)}** ({_md(runtimes)}): {_md(what)}"
                                        for column, runtimes, what in entries] + [""]


def _skipped(skipped: list) -> list[str]:
    lines = ["## Skipped", ""]
    entries = [s for s in skipped if isinstance(s, dict)]
    if not entries:
        return lines + ["Nothing was skipped."]
    for entry in entries:
        where = _md(entry.get("variant"))
        if entry.get("runtime"):
            where += f" on {_md(entry['runtime'])}"
        lines.append(f"- **{where}:** {_md(entry.get('reason') or 'no reason given')}")
    return lines


def render_markdown(report: Report | dict) -> str:
    """Return the report (a Report, or report.json as read) as a Markdown document (ends with a newline)."""
    report = machine_labels(as_report(report))
    model = _dict(report.model)
    title = f"# qdeploy report — {_md(model.get('source') or 'unknown model')}"
    if model.get("task"):
        title += f" ({_md(model['task'])})"
    meta = [f"{label} {_md(value)}" for value, label in
            ((report.created, "created"), (report.version, "qdeploy"), (report.schema, "schema")) if value]
    if model.get("sha256"):
        meta.append(f"model sha256 `{_md(str(model['sha256'])[:12])}`")
    lines = [title, ""] + ([" · ".join(meta), ""] if meta else [])
    lines += _recommendation(report)

    lines += _timed(report.results)
    lines += ["## Results", ""]
    groups = _groups(report.results)
    if not groups:
        lines += ["There are no benchmark results to show.", ""]
    else:
        lines += ["Speed-up is relative to PyTorch eager fp32 at the same batch size and sequence length: the median "
                  "of per-round ratios from interleaved rounds, with its 95 % interval. Quality cells show the value, "
                  "its delta (Δ) to fp32, the 95 % interval and the paired test's p against fp32; ✗ marks a loss "
                  "beyond the tolerance.", ""]
    for (batch, seq_len), rows in groups:
        lines += [f"### batch {_md(batch)} · seq_len {_md(seq_len)}", ""] + _table(rows) + [""]
    metrics, columns, cells = _quality_matrix(report.results)
    if len(columns) > 1 and metrics:
        lines += ["## Quality by variant", "", "Each variant on the first runtime it ran on; Δ is to PyTorch fp32.", "",
                  "| metric | " + " | ".join(f"{_md(v)} ({_md(r)})" for v, r in columns) + " |",
                  "|:---|" + "---:|" * len(columns)]
        lines += ["| " + _md(metric) + " | " + " | ".join(_md(_fmt_quality(cells.get((metric, v))))
                                                       for v, _ in columns) + " |" for metric in metrics] + [""]
    plans = plan_lines(report.variants)
    if plans:
        lines += ["## Layer plans", "", "What each variant did to its Linear layers (w: weights, a: activations), read "
                  "from the graph it wrote; variants of one method that did different things say how.", ""]
        lines += [f"- {_md(line)}" for line in plans] + [""]
    generation = _generation_rows(report.results)
    if generation:
        lines += ["## Generation", "", "Greedy decoding with the KV cache; TTFT is the prefill of the prompt. Decode "
                  "speed-up is relative to PyTorch eager fp32 at the same batch.", "",
                  "| " + " | ".join(GENERATION_COLUMNS) + " |",
                  "|" + "|".join(":---" if c in ("variant", "runtime") else "---:" for c in GENERATION_COLUMNS) + "|"]
        lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in generation] + [""]
    lines += _skipped(_list(report.skipped)) + [""]
    lines += _machine(_dict(report.machine)) + [""]
    lines += _settings(_dict(report.settings))
    return "\n".join(lines).rstrip() + "\n"
