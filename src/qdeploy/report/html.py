"""Render a qdeploy report (schema ``qdeploy.report/1``) as one self-contained HTML page.

The page must open offline and be safe to attach or archive: inline CSS, inline SVG charts computed here (the Pareto
plot and bar charts in ``plot_svg``), no JavaScript and no URLs of any kind. Standard library only, independent of
the rest of ``qdeploy``. Every string read from the report is escaped exactly once: cells are plain text unless
wrapped in ``_Safe``, which only this module builds, from escaped parts.

Reading order: what to ship and why first, then the numbers behind it, then how they were measured.
"""
from __future__ import annotations

from typing import Any, Callable

from .formatting import (DASH, GENERATION_COLUMNS, _concurrent, _fmt, _fmt_delta, _fmt_interval, _fmt_quality,
                         _generation_rows, _groups, _noisy, _num, _qualities, _quality_digits, _quality_matrix,
                         _quality_unit, _timing_cell, _timings, _what_was_timed, machine_labels, plan_lines)
from .html_parts import _CSS, _as, _Safe, _scalar, _table, _two_lines, _value_html
from .model import Quality, Report, Row, as_report
from .plot_svg import _esc, _label, latency_chart, pareto_figure, size_chart


def _shape(batch: Any, seq_len: Any) -> str:
    return f"batch {batch} · seq_len {seq_len}"


# --- what to ship -------------------------------------------------------------------------------

def _match(choice: dict, rows: list[Row]) -> Row | None:
    """The result row a recommendation is about; machine_labels may have appended the machine to the variant."""
    names = {str(choice.get("variant")), f"{choice.get('variant')} @ {choice.get('machine')}"}
    for row in rows:
        if (str(row.variant) in names and row.runtime == choice.get("runtime")
                and row.batch == choice.get("batch") and row.seq_len == choice.get("seq_len")
                and row.machine in (None, choice.get("machine"))):
            return row
    return None


def _busy_reasons(row: Row | None) -> list[str]:
    return [str(r) for r in _as(row and row.busy_reasons, list)] or ["no reason recorded"]


def _choice_html(choice: dict, row: Row | None, show_machine: bool) -> str:
    where = ([f"machine {choice['machine']}"] if show_machine and choice.get("machine") else []) + \
        [_shape(choice.get("batch"), choice.get("seq_len"))]
    headline = choice.get("headline")
    if not headline:
        speed, quality = _num(choice.get("speedup")), _as(choice.get("quality"), dict)
        headline = f"ship {choice.get('variant') or '?'} on {choice.get('runtime') or '?'}"
        interval = _fmt_interval(choice.get("interval"))
        if speed is not None:
            headline += f": {speed:.2f}× {choice.get('vs') or 'PyTorch fp32'}" + (f" ({interval})" if interval else "")
        headline += f", {quality['phrase']}" if quality.get("phrase") else ""
    out = [f'<div class="rec"><h3>{_esc(" · ".join(where))}</h3><p class="headline">{_esc(headline)}</p>']
    if _as(row and row.busy_reasons, list):  # the chosen row itself; others' marks are among the reasons
        out.append(f'<p class="warn">⚠ measured while the machine was busy: {_esc("; ".join(_busy_reasons(row)))}</p>')
    reasons = [str(r) for r in _as(choice.get("reasons"), list)]
    if reasons:
        out.append("<ul>" + "".join(f"<li>{_esc(r)}</li>" for r in reasons) + "</ul>")
    tied = [str(t) for t in _as(choice.get("tied_with"), list)]
    if tied and not any(r.startswith("tied within") for r in reasons):  # reports whose reasons do not say it
        out.append(f"<small>Statistically tied with {_esc(', '.join(tied))}.</small>")
    return "".join(out) + "</div>"


def _recommendation(report: Report, results: list[Row]) -> tuple[list[str], set]:
    """The section, and the id()s of the recommended rows (marked in the tables and the plot)."""
    rec = _as(report.recommendation, dict)
    choices = [c for c in _as(rec.get("choices"), list) if isinstance(c, dict)]
    if not rec:
        return [], set()
    out = ["<h2>Recommendation</h2>"]
    basis = ", ".join(b for b in (f"judged on {rec['judged_on']}" if rec.get("judged_on") else "",
                                  f"tolerance {rec['tolerance']}" if rec.get("tolerance") else "") if b)
    if basis:
        out.append(f'<p class="note">{_esc(basis[0].upper() + basis[1:])}; speed-ups are medians of interleaved '
                   "timing rounds with their 95 % intervals.</p>")
    matched = [(c, _match(c, results)) for c in choices]
    machines = {str(m) for m in [c.get("machine") for c in choices] + [r.machine for r in results]
                if m is not None}
    out += [_choice_html(c, row, len(machines) > 1) for c, row in matched]
    if not choices:
        out.append('<div class="rec none"><p>No variant was recommended.</p></div>')
    return out, {id(row) for _, row in matched if row is not None}


def _threads_note(report: Report) -> list[str]:
    """Why the run used the thread count it did, when it chose one: it bears on every number below."""
    threads = _as(_as(report.settings, dict).get("threads_choice"), dict)
    if not threads:
        return []
    reason = f" — {_esc(threads['reason'])}" if threads.get("reason") else ""
    return [f'<p class="note">Threads: {_esc(_scalar(threads.get("threads")))}{reason}</p>']


# --- tables -------------------------------------------------------------------------------------

def _metrics(rows: list[Row]) -> list[str]:
    metrics: list[str] = []
    for row in rows:
        metrics += [m for m in _qualities(row) if m not in metrics]
    return metrics


def _quality_cell(quality: Any, factor: float, unit: str) -> _Safe | str:
    if not isinstance(quality, Quality):
        return DASH
    value = _fmt(quality.value, _quality_digits(quality))
    interval = _fmt_interval(quality.interval, _quality_digits(quality))
    lines = [_esc(value + (f" ({interval})" if interval else ""))]
    delta = _fmt_delta(quality, factor, unit)
    if delta:
        lines.append(f"<small>{_esc(delta)}</small>")
    verdict = _as(quality.verdict, dict)
    if verdict.get("phrase"):
        css = "ok" if verdict.get("qualifies") is True else "bad" if verdict.get("qualifies") is False else ""
        lines.append(f'<small class="{css} verdict">{_esc(verdict["phrase"])}</small>')
    return _Safe("".join(lines))


def _stacked(text: str) -> _Safe:
    """'1234.5 (3.21×)' as the number over its ratio: one line each keeps the results table inside the page."""
    value, _, ratio = text.partition(" (")
    return _two_lines(value, ratio.rstrip(")"))


def _quality_short(quality: Any) -> _Safe | str:
    """Value over its delta, as the other renderers print them (the summary has the intervals)."""
    value, _, delta = _fmt_quality(quality).partition(" (")
    return _two_lines(value, delta.rstrip(")"))


def _marks(row: Row, chosen: set, busy_notes: list[str]) -> _Safe:
    """The note cell; a busy row gets a numbered footnote (printed under the table) and its reasons as a tooltip."""
    html_marks = ['<span class="ok">★ recommended</span>'] if id(row) in chosen else []
    html_marks += [f'<span class="warn">{_esc(_noisy(row))}</span>'] if _noisy(row) else []
    if row.busy is True:
        reasons = "; ".join(_busy_reasons(row))
        busy_notes.append(f"{_label(row)}: measured while the machine was busy ({reasons})")
        html_marks.append(f'<span class="warn" title="{_esc(reasons)}">⚠ busy<sup>{len(busy_notes)}</sup></span>')
    return _Safe("<br>".join(html_marks))


def _footnotes(notes: list[str]) -> str:
    return ('<ol class="note">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ol>") if notes else ""


def _summary(rows: list[Row], chosen: set) -> str:
    metrics = _metrics(rows)
    units = {m: _quality_unit([_qualities(r).get(m) for r in rows]) for m in metrics}
    cells, notes = [], []
    for row in rows:
        quals = _qualities(row)
        speed = _two_lines(_fmt(row.speedup, 2, "×"), _fmt_interval(row.speedup_interval))
        cells.append([(row.variant, "key"), (row.runtime, ""), (speed, "num")]
                     + [(_quality_cell(quals.get(m), *units[m]), "num") for m in metrics]
                     + [(_fmt(row.size_mb, 1), "num"), (_marks(row, chosen, notes), "")])
    header = ["variant", "runtime", _Safe("speed-up<small>95 % interval</small>")] + metrics + ["size MB", "note"]
    return _table(header, cells) + _footnotes(notes)


def _load_text(row: Row) -> str:
    load = _as(row.load, dict)
    parts = []
    for when in ("before", "after"):
        sample = _as(load.get(when), dict)
        numbers = [f"{name} {_fmt(sample.get(key), 1)}{unit}" for key, name, unit in
                   (("load1", "load", ""), ("steal_pct", "steal", " %"), ("others_cpu_pct", "others", " %"))
                   if _num(sample.get(key)) is not None]
        if numbers:
            parts.append(f"{when}: " + ", ".join(numbers))
    return "; ".join(parts) or DASH


def _results(rows: list[Row], _shape_text: str = "") -> str:
    """The numbers that decide, in one table that fits the page; the rest in a second, folded one."""
    metrics, timings = _metrics(rows), _timings(rows)
    concurrent = any(isinstance(r.concurrent, dict) for r in rows)
    main, more = [], []
    for row in rows:
        lat, quals = _as(row.latency_ms, dict), _qualities(row)
        numbers = [_fmt(lat.get("p50")),
                   _two_lines(_fmt(row.speedup, 2, "×"), _fmt_interval(row.speedup_interval)),
                   _two_lines(_fmt(row.runtime_speedup, 2, "×"), _fmt_interval(row.runtime_speedup_interval))]
        numbers += [_stacked(_concurrent(row))] if concurrent else []
        numbers += [_stacked(_timing_cell(row, timing)) for timing in timings]
        numbers += [_fmt(row.rss_delta_mb, 0), _fmt(row.load_s, 2), _fmt(row.size_mb, 1)]
        main.append([(row.variant, "key"), (row.runtime, "")] + [(n, "num") for n in numbers]
                    + [(_quality_short(quals.get(m)), "num") for m in metrics]
                    + [(_noisy(row) or ("⚠ busy" if row.busy is True else ""), "noisy")])
        cv = _num(row.cv)
        more.append([(row.variant, "key"), (row.runtime, ""), (row.precision, "")]
                    + [(text, "num") for text in (_fmt(lat.get("p90")), _fmt(lat.get("p99")),
                                                  _fmt(row.throughput_per_s, 1),
                                                  DASH if cv is None else f"{cv * 100:.1f} %",
                                                  _fmt(row.rounds, 0), _fmt(row.iterations, 0),
                                                  _fmt(row.peak_rss_mb, 0))]
                    + [(_load_text(row), ""), ("; ".join(_as(row.busy_reasons, list)) or DASH, "")])
    header = (["variant", "runtime", "p50 ms", "speed-up", "vs runtime fp32"]
              + (["concurrent/s"] if concurrent else []) + [f"{t} p50 ms" for t in timings]
              + ["memory MB", "load s", "size MB"] + metrics + ["note"])
    details = ["variant", "runtime", "precision", "p90 ms", "p99 ms", "throughput/s", "cv", "rounds", "iterations",
               "process peak RSS MB", "machine load", "busy because"]
    return (_table(header, main) + "<details><summary>More: p90/p99 latency, throughput, cv, rounds, process "
            "peak RSS, machine load</summary>" + _table(details, more) + "</details>")


def _quality_by_variant(report: Report, results: list[Row]) -> list[str]:
    metrics, columns, cells = _quality_matrix(results)
    if len(columns) <= 1 or not metrics:
        return []
    # Variants down, metrics across (report.md has it the other way): a plan has few metrics and many variants,
    # and this way round the table fits the page however many variants there are.
    units = {m: _quality_unit([cells.get((m, v)) for v, _ in columns]) for m in metrics}
    rows = [[(v, "key"), (r, "")] + [(_quality_cell(cells.get((m, v)), *units[m]), "num") for m in metrics]
            for v, r in columns]
    described = _as(report.metrics, dict)
    notes = "".join(f"<li><strong>{_esc(m)}</strong>: {_esc(described[m])}</li>" for m in metrics if described.get(m))
    return (["<h2>Quality by variant</h2>",
             '<p class="note">Each variant on the first runtime it ran on; Δ is to PyTorch fp32 (0..1 scores in '
             "points, i.e. ×100), with its 95 % interval where the report has one.</p>",
             _table(["variant", "runtime"] + metrics, rows)]
            + ([f'<ul class="note">{notes}</ul>'] if notes else []))


# --- charts -------------------------------------------------------------------------------------

def _plot_metric(report: Report, rows: list[Row]) -> str | None:
    """The recommendation's metric when the rows have it, else the rows' primary quality."""
    judged = _as(report.recommendation, dict).get("judged_on")
    if judged and any(str(judged) in _qualities(r) for r in rows):
        return str(judged)
    primary = [r.quality.metric if isinstance(r.quality, Quality) else None for r in rows]
    return next((str(m) for m in primary if m is not None), next(iter(_metrics(rows)), None))


# --- how it was measured ------------------------------------------------------------------------

_KNOWN_MACHINE_KEYS = {"cpu_model", "cores_physical", "cores_logical", "memory_gb", "isa", "onednn_isa_cap", "os",
                       "python", "libraries", "execution_providers"}


def _machine_rows(machine: dict) -> list[list[tuple[Any, str]]]:
    cores = " / ".join(f"{machine[key]} {kind}" for key, kind in
                       (("cores_physical", "physical"), ("cores_logical", "logical"))
                       if machine.get(key) is not None)
    isa = _as(machine.get("isa"), dict)
    flags = [str(k) for k, on in isa.items() if on is True]
    absent = [str(k) for k, on in isa.items() if on is False]
    libs = " · ".join(f"{k} {v}" for k, v in _as(machine.get("libraries"), dict).items() if v)
    memory = _num(machine.get("memory_gb"))
    pairs = [("CPU", machine.get("cpu_model")), ("Cores", cores),
             ("Memory", f"{memory:.1f} GB" if memory is not None else None),
             ("ISA", (", ".join(flags) or "none of the tracked extensions") + (f" (not: {', '.join(absent)})"
                                                                             if absent else "")),
             ("oneDNN ISA cap", machine.get("onednn_isa_cap")), ("OS", machine.get("os")),
             ("Python", machine.get("python")), ("Libraries", libs),
             ("ONNX Runtime providers", ", ".join(map(str, _as(machine.get("execution_providers"), list))))]
    rows = [[(k, "key"), (v, "")] for k, v in pairs if v not in (None, "")]
    # Keys this renderer does not know yet (a newer pipeline) still show, readably.
    rows += [[(str(k).replace("_", " "), "key"), (_value_html(v), "")] for k, v in machine.items()
             if k not in _KNOWN_MACHINE_KEYS and v not in (None, "", [], {})]
    return rows


def _setup(report: Report) -> list[str]:
    model = _as(report.model, dict)
    out = ["<h2>Model</h2>", _table(None, [[(str(k).replace("_", " "), "key"), (_value_html(v), "")]
                                           for k, v in model.items() if v not in (None, "")])] if model else []
    machines = {str(k): v for k, v in _as(report.machines, dict).items() if isinstance(v, dict)}
    if len(machines) > 1:
        out.append("<h2>Machines</h2>")
        for name, machine in machines.items():
            out += [f"<h3>{_esc(name)}</h3>", _table(None, _machine_rows(machine))]
    else:
        out += ["<h2>Machine</h2>", _table(None, _machine_rows(_as(report.machine, dict)))]
    settings = _as(report.settings, dict)
    if settings:
        rows = [[(key, "key"), (_value_html(value), "")] for key, value in settings.items()]
        out += ["<h2>Settings</h2>", _table(None, rows)]
    plan = _as(report.plan, dict)
    if plan:
        rows = [[(key, "key"), (_value_html(value), "")] for key, value in plan.items()]
        out += ["<details><summary>The plan as given</summary>", _table(None, rows), "</details>"]
    return out


def _per_shape(title: str, groups: list, render: Callable[[list[Row], str], str],
               note: str = "") -> list[str]:
    """One section with a sub-heading and one rendering per (batch, seq_len)."""
    if not groups:
        return []
    out = [f"<h2>{title}</h2>"] + ([f'<p class="note">{note}</p>'] if note else [])
    for (batch, seq_len), rows in groups:
        out += [f"<h3>{_esc(_shape(batch, seq_len))}</h3>", render(rows, _shape(batch, seq_len))]
    return out


def render_html(report: Report | dict) -> str:
    """Return the report (a Report, or report.json as read) as a complete, offline, single-file HTML document."""
    report = machine_labels(as_report(report))
    results = report.results
    model = _as(report.model, dict)
    source, task = model.get("source") or "unknown model", model.get("task")
    parts = (task, report.created and f"created {report.created}",
             report.version and f"qdeploy {report.version}")
    subtitle = " · ".join(_esc(p) for p in parts if p)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>qdeploy report — {_esc(source)}</title><style>{_CSS}</style></head><body>",
           f"<h1>qdeploy report — {_esc(source)}</h1>", f'<p class="sub">{subtitle}</p>']
    section, chosen = _recommendation(report, results)
    out += _threads_note(report) + section
    groups = _groups(results)
    if not groups:
        out.append('<h2>Results</h2><p class="empty">There are no benchmark results to show.</p>')
    out += _per_shape("Summary", groups, lambda rows, _: _summary(rows, chosen),
                      "Speed-up is relative to PyTorch eager fp32 at the same shape; quality shows the value, its "
                      "Δ to fp32 in the metric's own units (0..1 scores in points) and the verdict where recorded.")
    out += _per_shape("Quality versus speed", groups,
                      lambda rows, shape: pareto_figure(rows, shape, _plot_metric(report, rows), chosen))
    out += _quality_by_variant(report, results)
    out += _per_shape("Results", groups, _results,
                      "memory MB is what loading the variant added to the process (RSS delta); load s the time to "
                      "load it. The folded table holds tail latency, timing spread and the machine's load.")
    out += _per_shape("Latency", groups, latency_chart, "Bars show p50 latency; the thin whisker ends at p90.")
    plans = plan_lines(report.variants)
    if plans:  # what each variant did to its layers: a row name alone does not say (weight-int8 differs by format)
        out += ["<h2>Layer plans</h2>", '<ul class="note">' + "".join(f"<li>{_esc(line)}</li>" for line in plans)
                + "</ul>"]
    out += ["<h2>Model size</h2>", size_chart(_as(report.variants, list))]
    generation = [[(cell, "") for cell in row] for row in _generation_rows(results)]
    if generation:
        out += ["<h2>Generation</h2>", _table(GENERATION_COLUMNS, generation)]
    timed = [[(column, "key"), (runtimes, ""), (what, "")] for column, runtimes, what in _what_was_timed(results)]
    if timed:
        out += ["<h2>What was timed</h2>", _table(["numbers", "runtimes", "what the clock covered"], timed)]
    skipped = [e for e in _as(report.skipped, list) if isinstance(e, dict)]
    rows = [[(e.get("variant"), ""), (e.get("runtime"), ""), (e.get("reason"), "")] for e in skipped]
    out += ["<h2>Skipped</h2>", _table(["variant", "runtime", "reason"], rows) if rows
            else '<p class="empty">Nothing was skipped.</p>']
    out += _setup(report) + ["</body></html>"]
    return "\n".join(out) + "\n"
