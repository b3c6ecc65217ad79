"""Merge the reports of several qdeploy runs into one cross-run report.

Runs may come from different machines, runtimes or thread counts, so their numbers are only
placed side by side: each speed-up is the run's own ratio against its own PyTorch fp32
baseline on its own machine. A ratio between two runs would mix machines, so none is computed.
Writes compare.json (schema ``qdeploy.compare/1``), compare.md and one self-contained compare.html.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, InputError
from . import _write_atomic, load_report
from .compare_plans import plan_html, plan_markdown, plan_section
from .formatting import DASH, _fmt, _fmt_quality, _groups, _num, _qualities
from .html_parts import _CSS
from .markdown import _md
from .model import Quality, Report, Row, as_report
from .plot_svg import _WIDTH, _clip, _esc, _svg
from .recommend import recommend

COMPARE_SCHEMA = "qdeploy.compare/1"
# An em dash marks a combination a run did not measure; the renderers' en dash marks a missing field.
MISSING = "—"
_KEY = ("variant", "runtime", "batch", "seq_len")
_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#b279a2", "#72b7b2", "#9d755d", "#eeca3b"]
# One class per run colours both its SVG bars (fill) and its legend swatch (background).
_RUN_CSS = "".join(f".r{i}{{fill:{c};background:{c}}}" for i, c in enumerate(_PALETTE))
_COMPARE_CSS = _CSS + _RUN_CSS + """
.warn{border:2px solid #d4a72c;background:#fff8c5;padding:.5rem 1rem;border-radius:6px;margin:1rem 0}
.sw{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}td.miss{color:#8c959f;text-align:center}
"""


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _hashable(value: Any) -> Any:
    # A malformed (unhashable) batch or seq_len in a hand-edited report must not break merging.
    return value if isinstance(value, (int, float, str, type(None))) else str(value)


def _differs(values: list) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1


# --- labels and run metadata ----------------------------------------------------------------

def _short_cpu(name: Any) -> str:
    # Vendor strings carry trademark and clock noise that lengthens labels without telling runs apart.
    text = re.sub(r"\((R|TM)\)|\bCPU\b|\bProcessor\b|@.*$", " ", str(name or "unknown CPU"), flags=re.I)
    return " ".join(text.split()) or "unknown CPU"


def _threads(value: Any) -> str:
    return "default threads" if value is None else f"{value} thread" + ("" if value == 1 else "s")


def _unique(labels: list[str], names: list[str]) -> list[str]:
    counts = Counter(labels)
    labels = [f"{label} ({name})" if counts[label] > 1 and label != name else label
              for label, name in zip(labels, names)]
    # Same-named directories under different parents can still clash; number the later ones.
    taken: set[str] = set()
    out = []
    for label in labels:
        candidate, n = label, 1
        while candidate in taken:
            n += 1
            candidate = f"{label} #{n}"
        taken.add(candidate)
        out.append(candidate)
    return out


def _labels(reports: list[Report], names: list[str]) -> list[str]:
    """Name each run by what tells it apart (CPU, threads), falling back to its directory name."""
    cpus = [_dict(r.machine).get("cpu_model") for r in reports]
    threads = [_dict(r.settings).get("threads") for r in reports]
    labels = []
    for cpu, count, name in zip(cpus, threads, names):
        parts = ([_short_cpu(cpu)] if _differs(cpus) else []) + ([_threads(count)] if _differs(threads) else [])
        labels.append(" · ".join(parts) or name)
    return _unique(labels, names)


def _warnings(runs: list[dict], reports: list[Report]) -> list[str]:
    out = []
    models = [(run["label"], _dict(run["model"])) for run in runs]
    shas = [m.get("sha256") for _, m in models]
    if _differs([s for s in shas if s]):
        listing = "; ".join(f"{label}: {m.get('source') or '?'} ({str(m.get('sha256') or '?')[:12]})"
                            for label, m in models)
        out.append(f"The runs are of different models ({listing}). Rows are merged by variant name "
                   "only; their numbers do not describe the same model.")
    elif any(not s for s in shas):
        missing = ", ".join(label for (label, _), s in zip(models, shas) if not s)
        out.append(f"No model sha256 recorded for {missing}: cannot check that all runs used the same model.")
    if _differs([m.get("task") for _, m in models]):
        listing = "; ".join(f"{label}: {m.get('task') or '?'}" for label, m in models)
        out.append(f"The runs are of different tasks ({listing}); quality metrics are not comparable.")
    for run, report in zip(runs, reports):
        if not report.results:
            out.append(f"Run {run['label']} has no benchmark results.")
    return out


def _library_differences(runs: list[dict]) -> dict[str, dict[str, Any]]:
    libraries = [_dict(_dict(run["machine"]).get("libraries")) for run in runs]
    names = list(dict.fromkeys(name for libs in libraries for name in libs))
    diffs = {}
    for name in names:
        versions = {run["label"]: libs.get(name) for run, libs in zip(runs, libraries)}
        if _differs(list(versions.values())):
            diffs[name] = versions
    commits = {run["label"]: _dict(run["machine"]).get("qdeploy_commit") for run in runs}
    if _differs(list(commits.values())):
        diffs["qdeploy_commit"] = commits
    return diffs


# --- merged rows ------------------------------------------------------------------------------

def _headline(row: Row) -> Quality | None:
    return row.quality if isinstance(row.quality, Quality) else None


def _cell(row: Row, metric: Any) -> dict:
    qualities = _qualities(row)
    # Prefer the metric the first run reports for this row, so one run's accuracy is not set
    # beside another's agreement just because only one of them was given an eval set.
    quality = qualities.get(str(metric)) or _headline(row) or next(iter(qualities.values()), Quality())
    return {"p50": _num(_dict(row.latency_ms).get("p50")),
            "speedup_vs_fp32": _num(row.speedup),
            "quality_metric": quality.metric, "quality_value": _num(quality.value),
            "quality_delta": _num(quality.delta), "noisy": row.noisy is True}


def _merge_rows(runs: list[dict], reports: list[Report]) -> list[dict]:
    found: dict[tuple, dict[str, Row]] = {}
    for run, report in zip(runs, reports):
        for row in report.results:
            key = tuple(_hashable(getattr(row, k)) for k in _KEY)
            found.setdefault(key, {}).setdefault(run["label"], row)  # a duplicate row: first wins
    merged = []
    for key, by_label in found.items():
        metric = next((q.metric for q in map(_headline, by_label.values()) if q and q.metric is not None), None)
        by_run = {run["label"]: _cell(by_label[run["label"]], metric) if run["label"] in by_label else None
                  for run in runs}
        merged.append(dict(zip(_KEY, key), by_run=by_run))
    # Grouped by shape (sorted); within a shape, rows keep the order of the first run that has them.
    return [row for _, rows in _compare_groups(merged) for row in rows]


def _compare_groups(rows: list) -> list[tuple[tuple, list[dict]]]:
    """compare.json's rows by shape; they are dicts, not report Rows."""
    return _groups([r for r in rows if isinstance(r, dict)], lambda r: (r.get("batch"), r.get("seq_len")))


def build_comparison(reports: list[Report | dict], names: list[str], dirs: list[str] | None = None,
                     labels: list[str] | None = None) -> dict:
    """The compare.json document for already-loaded reports; names are the run directory names. `labels` name the
    columns (the machine types of one run); by default each run is named by what tells it apart."""
    reports = [as_report(r) for r in reports]
    labels = labels or _labels(reports, names)
    runs = [{"label": label, "dir": d, "machine": _dict(r.machine), "settings": _dict(r.settings),
             "model": _dict(r.model), "created": r.created}
            for label, d, r in zip(labels, dirs or names, reports)]
    # One recommendation per machine: each run's own (re-judged from its rows when the report predates them).
    recommendations = [{"label": label, "choices": (r.recommendation or recommend(r).to_dict())["choices"]}
                       for label, r in zip(labels, reports)]
    return {"schema": COMPARE_SCHEMA, "runs": runs, "warnings": _warnings(runs, reports),
            "recommendations": recommendations,
            "library_differences": _library_differences(runs), "rows": _merge_rows(runs, reports),
            "plans": plan_section([(label, r.variants) for label, r in zip(labels, reports)])}


def _recommendation_lines(data: dict) -> list[tuple[str, list[str]]]:
    """(headline, reasons) per run and batch, labelled with the run (the machine)."""
    return [(f"{entry['label']}, batch {c.get('batch')}: {c.get('headline')}", list(c.get("reasons") or []))
            for entry in data.get("recommendations") or [] for c in entry.get("choices") or []]


# --- shared by both renderers ---------------------------------------------------------------

def _machine_facts(runs: list[dict]) -> list[tuple[str, list[Any]]]:
    def facts(run: dict) -> dict[str, Any]:
        machine, model = _dict(run["machine"]), _dict(run["model"])
        cores = " / ".join(f"{machine[k]} {kind}" for k, kind in
                           (("cores_physical", "physical"), ("cores_logical", "logical")) if machine.get(k) is not None)
        flags = [str(k) for k, on in _dict(machine.get("isa")).items() if on is True]
        return {"Directory": run["dir"], "CPU": machine.get("cpu_model"), "Cores": cores,
                "Threads": _dict(run["settings"]).get("threads"),
                "ISA": ", ".join(flags) or "none of the tracked extensions",
                "oneDNN ISA cap": machine.get("onednn_isa_cap"), "OS": machine.get("os"),
                "Python": machine.get("python"), "qdeploy commit": machine.get("qdeploy_commit"),
                "Model": model.get("source"), "Task": model.get("task"), "Created": run["created"]}
    table = [facts(run) for run in runs]
    return [(name, [f[name] for f in table]) for name in table[0]]


def _metric_note(rows: list[dict]) -> tuple[bool, str]:
    """Whether quality cells must name their metric (mixed metrics), and a note naming it otherwise."""
    metrics = {str(c["quality_metric"]) for r in rows for c in r["by_run"].values()
               if c and c["quality_metric"] is not None}
    return len(metrics) > 1, (f"Quality metric: {metrics.pop()}. " if len(metrics) == 1 else "")


def _cell_texts(cell: dict | None, mixed: bool, fmt_quality: Callable[[Any], str]) -> list[str]:
    if cell is None:
        return [MISSING] * 3
    quality = fmt_quality(Quality(value=cell["quality_value"], delta=cell["quality_delta"]))
    if mixed and cell["quality_metric"] is not None:
        quality += f" {cell['quality_metric']}"
    return [_fmt(cell["p50"]) + (" ⚠" if cell["noisy"] else ""), _fmt(cell["speedup_vs_fp32"], 2, "×"), quality]


_SPEEDUP_NOTE = ("Each speed-up is that run's own ratio against PyTorch eager fp32 on its own machine at the "
                 "same shape; ratios between runs are deliberately not computed. ⚠ marks a noisy latency; "
                 f"{MISSING} marks a combination the run did not measure.")


def _shape(batch: Any, seq_len: Any) -> str:
    return f"batch {batch} · seq_len {seq_len}"


# --- Markdown ---------------------------------------------------------------------------------

def _md_table(header: list[str], rows: list[list[Any]], text_columns: int = 1) -> list[str]:
    align = [":---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return (["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
            + ["| " + " | ".join(_md(c) if c not in (None, "") else DASH for c in row) + " |" for row in rows])


def render_compare_markdown(data: dict) -> str:
    runs, labels = data["runs"], [run["label"] for run in data["runs"]]
    lines = [f"# qdeploy compare — {len(runs)} runs", ""]
    recommended = _recommendation_lines(data)
    if recommended:
        lines += ["## Recommendation per machine", ""]
        for headline, reasons in recommended:
            lines += [f"- **{_md(headline)}**"] + [f"  - {_md(r)}" for r in reasons]
        lines.append("")
    for warning in data["warnings"]:
        lines += [f"> ⚠ **Warning:** {_md(warning)}", ""]
    lines += ["## Machines", ""] + _md_table([""] + [_md(l) for l in labels],
                                               [[name] + values for name, values in _machine_facts(runs)],
                                               len(labels) + 1) + [""]
    lines += ["## Library differences", ""]
    diffs = data["library_differences"]
    if diffs:
        lines += _md_table(["library"] + [_md(l) for l in labels],
                           [[name] + [versions.get(l) for l in labels] for name, versions in diffs.items()],
                           len(labels) + 1)
    else:
        lines.append("All library versions and the qdeploy commit are the same in every run.")
    lines += ["", "## Results", ""]
    groups = _compare_groups(data["rows"])
    lines += [_SPEEDUP_NOTE if groups else "There are no benchmark results to show.", ""]
    for (batch, seq_len), rows in groups:
        mixed, note = _metric_note(rows)
        header = ["variant", "runtime"] + [f"{_md(l)} {col}" for l in labels
                                           for col in ("p50 ms", "speed-up", "quality (Δ)")]
        cells = [[r["variant"], r["runtime"]]
                 + [t for l in labels for t in _cell_texts(r["by_run"][l], mixed, _fmt_quality)] for r in rows]
        lines += [f"### {_md(_shape(batch, seq_len))}", ""] + ([note, ""] if note else [])
        lines += _md_table(header, cells, 2) + [""]
    lines += plan_markdown(data.get("plans"))
    return "\n".join(lines).rstrip() + "\n"


# --- HTML ---------------------------------------------------------------------------------------

def _speedup_chart(rows: list[dict], labels: list[str], shape: str) -> str:
    """Grouped horizontal bars: one group per variant×runtime, one bar per run, a dashed line at 1×."""
    groups = [(f"{r['variant']} / {r['runtime']}",
               [_num((r["by_run"][label] or {}).get("speedup_vs_fp32")) for label in labels]) for r in rows]
    values = [v for _, bars in groups for v in bars if v is not None]
    if not values:
        return '<p class="empty">No speed-ups recorded.</p>'
    label_w = min(260, 16 + 6.8 * max(len(_clip(name, 36)) for name, _ in groups))
    plot_w, bar_h, gap = _WIDTH - label_w - 70, 14, 10  # 70px keeps the value text inside the box
    top = max(values + [1.0])  # the 1× reference must stay on the chart
    x = lambda v: label_w + plot_w * max(v, 0.0) / top
    body, y = [], 6.0
    for name, bars in groups:
        mid = y + bar_h * len(bars) / 2
        body.append(f'<text x="{label_w - 8:.1f}" y="{mid:.1f}" text-anchor="end" dominant-baseline="middle">'
                    f"<title>{_esc(name)}</title>{_esc(_clip(name, 36))}</text>")
        for index, (label, value) in enumerate(zip(labels, bars)):
            text, end = (MISSING, label_w) if value is None else (f"{value:.2f}×", x(value))
            if value is not None:
                body.append(f'<rect class="r{index % len(_PALETTE)}" x="{label_w:.1f}" y="{y + 1:.1f}" '
                            f'width="{end - label_w:.1f}" height="{bar_h - 2}"><title>{_esc(label)}: '
                            f"{_esc(text)}</title></rect>")
            body.append(f'<text class="plabel" x="{end + 4:.1f}" y="{y + bar_h / 2:.1f}" '
                        f'dominant-baseline="middle">{_esc(text)}</text>')
            y += bar_h
        y += gap
    body.append(f'<line class="ref" x1="{x(1.0):.1f}" y1="2" x2="{x(1.0):.1f}" y2="{y - gap + 2:.1f}"/>')
    return _svg(y - gap + 8, body, f"speed-up versus fp32 per run, {shape}")


def _html_table(head_rows: list[str], rows: list[list[tuple[Any, str]]]) -> str:
    cell = lambda text, css: f'<td class="{css}">{_esc(text)}</td>' if css else f"<td>{_esc(text)}</td>"
    body = "".join("<tr>" + "".join(cell(t, c) for t, c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead>{"".join(head_rows)}</thead><tbody>{body}</tbody></table></div>'


def _html_results(rows: list[dict], labels: list[str]) -> str:
    mixed, note = _metric_note(rows)
    head = ['<tr><th rowspan="2">variant</th><th rowspan="2">runtime</th>'
            + "".join(f'<th colspan="3">{_esc(l)}</th>' for l in labels) + "</tr>",
            "<tr>" + "<th>p50 ms</th><th>speed-up</th><th>quality (Δ)</th>" * len(labels) + "</tr>"]
    cells = [[(r["variant"], "key"), (r["runtime"], "key")]
             + [(t, "miss" if t == MISSING else "num") for l in labels
                for t in _cell_texts(r["by_run"][l], mixed, _fmt_quality)] for r in rows]
    return (f'<p class="note">{_esc(note)}</p>' if note else "") + _html_table(head, cells)


def render_compare_html(data: dict) -> str:
    runs, labels = data["runs"], [run["label"] for run in data["runs"]]
    # Only runs that drew a bar somewhere: a swatch for a colour the charts never show explains nothing.
    drawn = [i for i, l in enumerate(labels)
             if any(_num((r["by_run"].get(l) or {}).get("speedup_vs_fp32")) is not None for r in data["rows"])]
    legend = "".join(f'<span class="sw r{i % len(_PALETTE)}"></span>{_esc(labels[i])}' for i in drawn)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>qdeploy compare — {len(runs)} runs</title><style>{_COMPARE_CSS}</style></head><body>",
           f"<h1>qdeploy compare — {len(runs)} runs</h1>", f'<p class="sub">{_esc(" · ".join(labels))}</p>']
    recommended = _recommendation_lines(data)
    if recommended:
        out += ["<h2>Recommendation per machine</h2>", "<ul>"]
        out += [f"<li><strong>{_esc(h)}</strong>" + "".join(f"<br>{_esc(r)}" for r in reasons) + "</li>"
                for h, reasons in recommended] + ["</ul>"]
    out += [f'<div class="warn"><strong>⚠ Warning:</strong> {_esc(w)}</div>' for w in data["warnings"]]
    run_heads = "".join(f"<th>{_esc(l)}</th>" for l in labels) + "</tr>"
    facts = [[(name, "key")] + [(v, "") for v in values] for name, values in _machine_facts(runs)]
    out += ["<h2>Machines</h2>", _html_table(["<tr><th></th>" + run_heads], facts), "<h2>Library differences</h2>"]
    libs = [[(name, "key")] + [(versions.get(l), "") for l in labels]
            for name, versions in data["library_differences"].items()]
    out.append(_html_table(["<tr><th>library</th>" + run_heads], libs) if libs else
               '<p class="empty">All library versions and the qdeploy commit are the same in every run.</p>')
    groups = _compare_groups(data["rows"])
    out += ["<h2>Speed-up per run</h2>", f'<p class="note">{_esc(_SPEEDUP_NOTE)}</p>']
    out += [f"<p>{legend}</p>"] if legend else []
    if not groups:
        out.append('<p class="empty">There are no benchmark results to show.</p>')
    for (batch, seq_len), rows in groups:
        out += [f"<h3>{_esc(_shape(batch, seq_len))}</h3>", _speedup_chart(rows, labels, _shape(batch, seq_len))]
    out.append("<h2>Results</h2>")
    for (batch, seq_len), rows in groups:
        out += [f"<h3>{_esc(_shape(batch, seq_len))}</h3>", _html_results(rows, labels)]
    out += plan_html(data.get("plans"))
    return "\n".join(out + ["</body></html>"]) + "\n"


# --- entry point ------------------------------------------------------------------------------

def _check_out(out: Path) -> None:
    # Refuse rather than overwrite: a half-replaced set of compare files would contradict each other.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {out} exists and is not empty; choose a new or empty one")


def compare_runs(run_dirs: list[Path], out: Path) -> Path:
    """Merge the reports in run_dirs into out/compare.{json,md,html}; return the path of compare.html."""
    run_dirs, out = [Path(d) for d in run_dirs], Path(out)
    if len(run_dirs) < 2:
        raise ConfigError(f"compare needs at least 2 run directories, got {len(run_dirs)}")
    resolved = [d.resolve() for d in run_dirs]
    if len(set(resolved)) < len(resolved):
        raise ConfigError("the same run directory is given more than once")
    missing = [str(d) for d in run_dirs if not d.exists()]
    if missing:
        raise InputError(f"run directory not found: {', '.join(missing)}")
    _check_out(out)
    reports = [load_report(d) for d in run_dirs]
    names = [(d if d.is_dir() else d.parent).name for d in resolved]
    return write_comparison(build_comparison(reports, names, [str(d) for d in run_dirs]), out)


def write_comparison(data: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    # JSON first, so the human-readable files never show numbers the JSON lacks.
    _write_atomic(out / "compare.json", json.dumps(data, indent=2, default=str))
    _write_atomic(out / "compare.md", render_compare_markdown(data))
    _write_atomic(out / "compare.html", render_compare_html(data))
    return out / "compare.html"
