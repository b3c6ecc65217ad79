"""Render a qdeploy report (schema ``qdeploy.report/1``) as one self-contained HTML page.

The page must open offline and be safe to attach or archive: inline CSS, inline SVG
charts computed here, no JavaScript and no URLs of any kind (inline SVG in HTML5 needs
no xmlns). Standard library only, independent of the rest of ``qdeploy``. Every string
read from the report goes through ``html.escape`` because names and paths are user input.
"""
from __future__ import annotations

import html
import math
from typing import Any, Callable

from ._format import (machine_labels, GENERATION_COLUMNS, _concurrent, _generation_rows, _fmt, _fmt_quality, _groups, _noisy, _num, _qualities, _timing_cell, _timings,
                      _what_was_timed)
_WIDTH = 760  # SVG viewBox width; CSS scales the chart to the page.
_COLUMNS = ["variant", "runtime", "precision", "p50 ms", "p90 ms", "p99 ms",
            "throughput/s", "speed-up", "vs runtime fp32", "concurrent/s", "size MB", "peak RSS MB"]
# System font stack only: a web font would need a network fetch.
_CSS = """
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#fff;
 max-width:1100px;margin:2rem auto;padding:0 1rem}h1{margin-bottom:.2rem}.sub,.note,.empty{color:#59636e}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2rem}.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.5rem 0 1rem}td.noisy{color:#9a6700}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top}
th,td.key{background:#f6f8fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
svg{width:100%;max-width:760px;height:auto;display:block;font-size:12px}svg text{fill:#1f2328}
.bar{fill:#4c78a8}.bar.size{fill:#72b7b2}.whisker{stroke:#1f2328;stroke-width:1.5}.plabel{font-size:11px}
.axis{stroke:#59636e}.grid{stroke:#eaeef2}.ref{stroke:#8c959f;stroke-dasharray:4 3}
.point{fill:#8c959f;stroke:#fff}.point.pareto{fill:#e45756;stroke:#7a1f1a}
.pareto-line{fill:none;stroke:#e45756;stroke-width:1.5}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _as(value: Any, kind: type) -> Any:
    # Hand-edited or truncated reports may hold null or the wrong type anywhere.
    return value if isinstance(value, kind) else kind()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(row: dict) -> str:
    return f"{row.get('variant') or '?'} / {row.get('runtime') or '?'}"


def _table(header: list[str] | None, rows: list[list[tuple[Any, str]]]) -> str:
    """rows hold (text, css class) pairs; text is escaped here, exactly once."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header or [])
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    cell = lambda text, css: f'<td class="{css}">{_esc(text)}</td>' if css else f"<td>{_esc(text)}</td>"
    body = "".join("<tr>" + "".join(cell(t, c) for t, c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table>{head}<tbody>{body}</tbody></table></div>'


def _results_table(rows: list[dict], _shape: str = "") -> str:
    metrics: list[str] = []
    for row in rows:
        metrics += [m for m in _qualities(row) if m not in metrics]
    timings = _timings(rows)
    cells = []
    for row in rows:
        lat, quals = _as(row.get("latency_ms"), dict), _qualities(row)
        numbers = [_fmt(lat.get("p50")), _fmt(lat.get("p90")), _fmt(lat.get("p99")),
                   _fmt(row.get("throughput_per_s"), 1), _fmt(row.get("speedup_vs_fp32"), 2, "×"),
                   _fmt(row.get("speedup_vs_runtime_fp32"), 2, "×"), _concurrent(row),
                   _fmt(row.get("size_mb"), 1), _fmt(row.get("peak_rss_mb"), 0)]
        numbers += [_timing_cell(row, timing) for timing in timings]
        cells.append([(row.get("variant"), ""), (row.get("runtime"), ""), (row.get("precision"), "")]
                     + [(n, "num") for n in numbers]
                     + [(_fmt_quality(quals.get(m)), "num") for m in metrics]
                     + [(_noisy(row), "noisy")])
    return _table(_COLUMNS + [f"{t} p50 ms" for t in timings] + metrics + ["note"], cells)


def _svg(height: float, body: list[str], label: str) -> str:
    head = f'<svg viewBox="0 0 {_WIDTH} {height:.0f}" role="img" aria-label="{_esc(label)}">'
    return head + "".join(body) + "</svg>"


def _hbar_chart(items: list[tuple[str, float, float | None, str]], label: str,
                css: str = "bar") -> str:
    """Horizontal bars; items are (label, value, whisker end or None, value text)."""
    label_w = min(260, 16 + 6.8 * max(len(_clip(i[0], 36)) for i in items))
    plot_w, row_h = _WIDTH - label_w - 170, 24  # 170px keeps the value text inside the box
    top = max(max(v, w or 0.0) for _, v, w, _ in items) or 1.0
    body = []
    for index, (name, value, whisker, text) in enumerate(items):
        y, mid = 6 + index * row_h, 6 + index * row_h + row_h / 2
        width = end = plot_w * max(value, 0.0) / top
        body.append(f'<text x="{label_w - 8:.1f}" y="{mid:.1f}" text-anchor="end" '
                    f'dominant-baseline="middle"><title>{_esc(name)}</title>{_esc(_clip(name, 36))}</text>'
                    f'<rect class="{css}" x="{label_w:.1f}" y="{y + 4:.1f}" width="{width:.1f}" '
                    f'height="{row_h - 8}"/>')
        if whisker is not None and whisker > value:
            end = plot_w * whisker / top
            x0, x1 = label_w + width, label_w + end
            body.append(f'<line class="whisker" x1="{x0:.1f}" y1="{mid:.1f}" x2="{x1:.1f}" y2="{mid:.1f}"/>'
                        f'<line class="whisker" x1="{x1:.1f}" y1="{y + 6:.1f}" x2="{x1:.1f}" '
                        f'y2="{y + row_h - 6:.1f}"/>')
        body.append(f'<text x="{label_w + end + 6:.1f}" y="{mid:.1f}" '
                    f'dominant-baseline="middle">{_esc(text)}</text>')
    return _svg(12 + len(items) * row_h, body, label)


def _latency_chart(rows: list[dict], shape: str) -> str:
    items = []
    for row in rows:
        lat = _as(row.get("latency_ms"), dict)
        p50, p90 = _num(lat.get("p50")), _num(lat.get("p90"))
        if p50 is not None:
            text = f"{p50:.2f} ms" + (f" (p90 {p90:.2f})" if p90 is not None else "")
            items.append((_label(row), p50, p90, text))
    return _hbar_chart(items, f"p50 latency, {shape}") if items else '<p class="empty">No latency data.</p>'


def _pareto(points: list[tuple[float, float]]) -> set[int]:
    """Indices of points no other point beats on both axes (>= both, > one)."""
    return {i for i, (x, y) in enumerate(points)
            if not any(qx >= x and qy >= y and (qx > x or qy > y) for qx, qy in points)}


def _ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], int]:
    """Round-numbered ticks inside [lo, hi] and the decimals needed to print them."""
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    digits = next(d for d in range(12) if abs(round(step, d) - step) < step * 1e-6)
    first = math.ceil(lo / step - 1e-9)
    ticks = [(first + k) * step for k in range(int((hi - lo) / step) + 2)]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks if t <= hi + step * 1e-9], digits


def _span(values: list[float], anchor: float) -> tuple[float, float]:
    # Always include the fp32 reference (speed-up 1, delta 0) so the dashed baseline
    # is visible, then pad so no point sits on the frame.
    lo, hi = min(values + [anchor]), max(values + [anchor])
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1e-4)
    return lo - pad, hi + pad


def _place_label(x: float, y: float, width: float, flip: bool, placed: list) -> float:
    """Baseline y for a point label clear of earlier labels: variants often share nearly
    the same speed-up and delta, and labels at one fixed offset would print on top of each other."""
    x0 = x - width - 8 if flip else x + 8
    for dy in (-6, 16, -20, 30, -34, 44):
        box = (x0, x0 + width, y + dy - 11, y + dy + 2)
        if not any(box[0] < b[1] and b[0] < box[1] and box[2] < b[3] and b[2] < box[3] for b in placed):
            break
    placed.append(box)
    return y + dy


def _scatter(rows: list[dict], shape: str) -> str:
    data = []
    for row in rows:
        quality = _as(row.get("quality"), dict)
        # "gain" is the delta signed so that up is better (perplexity falls when quality rises)
        x, y = _num(row.get("speedup_vs_fp32")), _num(quality.get("gain", quality.get("delta")))
        if x is not None and y is not None:
            data.append((x, y, _label(row), str(quality.get("metric") or "quality")))
    if not data:
        return '<p class="empty">No rows with both a speed-up and a quality delta.</p>'
    (x_lo, x_hi), (y_lo, y_hi) = _span([d[0] for d in data], 1.0), _span([d[1] for d in data], 0.0)
    left, right, top, bottom, height = 80, 20, 16, 52, 380
    sx = lambda v: left + (v - x_lo) / (x_hi - x_lo) * (_WIDTH - left - right)
    sy = lambda v: top + (y_hi - v) / (y_hi - y_lo) * (height - top - bottom)
    body, base = [], height - bottom
    xticks, xd = _ticks(x_lo, x_hi)
    for t in xticks:
        body.append(f'<line class="grid" x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{base}"/>'
                    f'<text x="{sx(t):.1f}" y="{base + 16}" text-anchor="middle">{t:.{xd}f}</text>')
    yticks, yd = _ticks(y_lo, y_hi)
    for t in yticks:
        text = f"{t:+.{yd}f}" if t else f"{0:.{yd}f}"  # a signed "+0.000" reads oddly
        body.append(f'<line class="grid" x1="{left}" y1="{sy(t):.1f}" x2="{_WIDTH - right}" '
                    f'y2="{sy(t):.1f}"/><text x="{left - 6}" y="{sy(t):.1f}" text-anchor="end" '
                    f'dominant-baseline="middle">{text}</text>')
    body.append(f'<line class="ref" x1="{sx(1.0):.1f}" y1="{top}" x2="{sx(1.0):.1f}" y2="{base}"/>'
                f'<line class="ref" x1="{left}" y1="{sy(0.0):.1f}" x2="{_WIDTH - right}" '
                f'y2="{sy(0.0):.1f}"/><line class="axis" x1="{left}" y1="{base}" x2="{_WIDTH - right}" '
                f'y2="{base}"/><line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>')
    metrics = ", ".join(dict.fromkeys(d[3] for d in data))
    body.append(f'<text x="{(left + _WIDTH - right) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
                f"speed-up vs PyTorch fp32 (×)</text>"
                f'<text transform="translate(16 {(top + base) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                f"Δ {_esc(metrics)} vs fp32</text>")
    front = _pareto([(d[0], d[1]) for d in data])
    line = sorted((data[i][0], data[i][1]) for i in front)
    body.append('<polyline class="pareto-line" points="'
                + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line) + '"/>')
    placed: list = []
    for index, (x, y, name, metric) in enumerate(data):
        css = "point pareto" if index in front else "point"
        tip = f"{name}: {x:.2f}× speed-up, Δ {metric} {y:+.4g}"
        tip += " (Pareto front)" if index in front else ""
        label = _clip(name, 40)
        # Labels near the right edge flip to the left of their point to stay inside.
        flip = sx(x) > _WIDTH * 0.65
        label_y = _place_label(sx(x), sy(y), 6.2 * len(label), flip, placed)
        body.append(f'<circle class="{css}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5">'
                    f"<title>{_esc(tip)}</title></circle>"
                    f'<text class="plabel" x="{sx(x) + (-8 if flip else 8):.1f}" y="{label_y:.1f}" '
                    f'text-anchor="{"end" if flip else "start"}">{_esc(label)}</text>')
    return _svg(height, body, f"quality delta versus speed-up, {shape}")


def _size_chart(variants: list) -> str:
    sizes = [(str(v.get("name") or "?"), _num(v.get("size_mb"))) for v in variants if isinstance(v, dict)]
    items = [(name, size, None, f"{size:.1f} MB") for name, size in sizes if size is not None]
    return _hbar_chart(items, "Model size per variant", "bar size") if items else \
        '<p class="empty">No variant sizes recorded.</p>'


def _machine_rows(report: dict) -> list[list[tuple[str, str]]]:
    machine, model = _as(report.get("machine"), dict), _as(report.get("model"), dict)
    cores = " / ".join(f"{machine[key]} {kind}" for key, kind in
                       (("cores_physical", "physical"), ("cores_logical", "logical"))
                       if machine.get(key) is not None)
    flags = [str(k) for k, on in _as(machine.get("isa"), dict).items() if on is True]
    libs = " · ".join(f"{k} {v}" for k, v in _as(machine.get("libraries"), dict).items() if v)
    providers = ", ".join(map(str, _as(machine.get("execution_providers"), list)))
    memory = _num(machine.get("memory_gb"))
    pairs = [("Model", model.get("source")), ("Task", model.get("task")),
             ("Model sha256", model.get("sha256")), ("CPU", machine.get("cpu_model")), ("Cores", cores),
             ("Memory", f"{memory:.1f} GB" if memory is not None else None),
             ("ISA", ", ".join(flags) or "none of the tracked extensions"),
             ("oneDNN ISA cap", machine.get("onednn_isa_cap")), ("OS", machine.get("os")),
             ("Python", machine.get("python")), ("Libraries", libs), ("ONNX Runtime providers", providers)]
    return [[(k, "key"), (v, "")] for k, v in pairs if v not in (None, "")]


def _per_shape(title: str, groups: list, render: Callable[[list[dict], str], str],
               note: str = "") -> list[str]:
    """One section with a sub-heading and one rendering per (batch, seq_len)."""
    if not groups:
        return []
    out = [f"<h2>{title}</h2>"] + ([f'<p class="note">{note}</p>'] if note else [])
    for (batch, seq_len), rows in groups:
        shape = f"batch {batch} · seq_len {seq_len}"
        out += [f"<h3>{_esc(shape)}</h3>", render(rows, shape)]
    return out


def render_html(report: dict) -> str:
    """Return the report as a complete, offline, single-file HTML document."""
    report = machine_labels(_as(report, dict))
    model = _as(report.get("model"), dict)
    source, task = model.get("source") or "unknown model", model.get("task")
    parts = (task, report.get("created") and f"created {report['created']}",
             report.get("qdeploy_version") and f"qdeploy {report['qdeploy_version']}")
    subtitle = " · ".join(_esc(p) for p in parts if p)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>qdeploy report — {_esc(source)}</title><style>{_CSS}</style></head><body>",
           f"<h1>qdeploy report — {_esc(source)}</h1>", f'<p class="sub">{subtitle}</p>',
           "<h2>Machine</h2>", _table(None, _machine_rows(report))]
    settings = _as(report.get("settings"), dict)
    if settings:
        rows = [[(key, "key"), (value, "")] for key, value in settings.items()]
        out += ["<h2>Settings</h2>", _table(None, rows)]
    timed = [[(column, "key"), (runtimes, ""), (what, "")]
             for column, runtimes, what in _what_was_timed(_as(report.get("results"), list))]
    if timed:
        out += ["<h2>What was timed</h2>", _table(["numbers", "runtimes", "what the clock covered"], timed)]
    groups = _groups(_as(report.get("results"), list))
    if not groups:
        out.append('<h2>Results</h2><p class="empty">There are no benchmark results to show.</p>')
    out += _per_shape("Latency", groups, _latency_chart,
                      "Bars show p50 latency; the thin whisker ends at p90.")
    out += _per_shape("Quality versus speed", groups, _scatter,
                      "Speed-up is relative to PyTorch eager fp32 at the same shape. Red points joined by "
                      "the line form the Pareto front: no other point is both at least as fast and at "
                      "least as accurate.")
    out += ["<h2>Model size</h2>", _size_chart(_as(report.get("variants"), list))]
    generation = [[(cell, "") for cell in row] for row in _generation_rows(_as(report.get("results"), list))]
    if generation:
        out += ["<h2>Generation</h2>", _table(GENERATION_COLUMNS, generation)]
    out += _per_shape("Results", groups, _results_table)
    skipped = [e for e in _as(report.get("skipped"), list) if isinstance(e, dict)]
    rows = [[(e.get("variant"), ""), (e.get("runtime"), ""), (e.get("reason"), "")] for e in skipped]
    out += ["<h2>Skipped</h2>", _table(["variant", "runtime", "reason"], rows) if rows
            else '<p class="empty">Nothing was skipped.</p>', "</body></html>"]
    return "\n".join(out) + "\n"
