"""Inline SVG for the HTML reports: the shared SVG helpers and the speed-up versus quality (Pareto) plot.

Computed here so the page needs no JavaScript and no fonts or files from elsewhere. Every string read from a
report goes through ``html.escape``: variant names and paths are user input.
"""
from __future__ import annotations

import html
import math
from typing import Any

from .formatting import (_delta_interval, _fmt_delta, _fmt_interval, _lower_is_better, _num, _pair, _qualities,
                         _quality_unit)
from .model import Row

_WIDTH = 760  # SVG viewBox width; CSS scales the chart to the page.
_CHAR_W = 6.4  # average advance of an 11px system sans-serif glyph; label boxes are estimated from it


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(row: Row) -> str:
    return f"{row.variant or '?'} / {row.runtime or '?'}"


def _svg(height: float, body: list[str], label: str) -> str:
    head = f'<svg viewBox="0 0 {_WIDTH} {height:.0f}" role="img" aria-label="{_esc(label)}">'
    return head + "".join(body) + "</svg>"


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
    # is visible, then pad so no point or error bar sits on the frame.
    lo, hi = min(values + [anchor]), max(values + [anchor])
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1e-4)
    return lo - pad, hi + pad


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_label(x: float, y: float, texts: list[str], frame: tuple, taken: list) -> tuple[str, float, float, str]:
    """Greedy placement: the first spot right or left of the point, nudged up and down, whose box stays in the frame
    and clear of the points, bars and labels placed so far. Variants often share nearly the same speed-up and delta,
    so one fixed offset would print labels on top of each other. Tried in turn: the name clear of everything, the
    name across error bars, the point's number alone (the key under the plot names it)."""
    for text, avoid in ((texts[0], taken), (texts[0], [b for b in taken if b[4] != "bar"]), (texts[-1], taken)):
        width = _CHAR_W * len(text)
        for dy in (0, -13, 13, -26, 26, -39, 39, -52, 52, -65, 65, -78, 78, -91, 91):
            for side in (1, -1):
                x0 = x + 9 if side > 0 else x - 9 - width
                box = (x0, y + dy - 7, x0 + width, y + dy + 7, "label")
                inside = frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1] and box[3] <= frame[3]
                if inside and not any(_overlaps(box, other) for other in avoid):
                    taken.append(box)
                    return text, (x0 if side > 0 else x0 + width), y + dy, "start" if side > 0 else "end"
    return texts[-1], x + 9, y, "start"  # nowhere free: overlap rather than drop the number


def _spread(interval: tuple | None) -> tuple | None:
    # The baseline against itself has the interval [1, 1]: a bar of no length is only clutter.
    return interval if interval and interval[1] - interval[0] > 1e-9 else None


def _points(rows: list[Row], metric: str, chosen: set) -> list[dict]:
    points = []
    for row in rows:
        quality = _qualities(row).get(metric)
        x = _num(row.speedup)
        delta = _num(quality.delta if quality else None)
        if x is None or delta is None:
            continue
        points.append({"quality": quality, "x": x, "delta": delta, "name": _label(row),
                       "x_err": _spread(_pair(row.speedup_interval)), "d_err": _spread(_delta_interval(quality)),
                       "busy": row.busy is True, "chosen": id(row) in chosen})
    return points


def _axes(body: list[str], sx, sy, x_span: tuple, y_span: tuple, frame: tuple) -> None:
    left, top, right, base = frame
    xticks, xd = _ticks(*x_span, count=7)
    for t in xticks:
        body.append(f'<line class="grid" x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{base}"/>'
                    f'<text x="{sx(t):.1f}" y="{base + 16}" text-anchor="middle">{t:.{xd}f}</text>')
    yticks, yd = _ticks(*y_span)
    for t in yticks:
        text = f"{t:+.{yd}f}" if t else f"{t:.{yd}f}"  # deltas are signed, but "+0.0" reads oddly
        body.append(f'<line class="grid" x1="{left}" y1="{sy(t):.1f}" x2="{right}" y2="{sy(t):.1f}"/>'
                    f'<text x="{left - 6}" y="{sy(t):.1f}" text-anchor="end" dominant-baseline="middle">{text}</text>')
    body.append(f'<line class="ref" x1="{sx(1.0):.1f}" y1="{top}" x2="{sx(1.0):.1f}" y2="{base}"/>'
                f'<line class="ref" x1="{left}" y1="{sy(0.0):.1f}" x2="{right}" y2="{sy(0.0):.1f}"/>'
                f'<line class="axis" x1="{left}" y1="{base}" x2="{right}" y2="{base}"/>'
                f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>')


def _error_bars(p: dict, sx, sy, factor: float) -> str:
    out, cx, cy = [], sx(p["x"]), sy(p["delta"] * factor)
    if p["x_err"]:
        x0, x1 = sx(p["x_err"][0]), sx(p["x_err"][1])
        out.append(f'<path class="err" d="M{x0:.1f} {cy:.1f}H{x1:.1f}M{x0:.1f} {cy - 3:.1f}V{cy + 3:.1f}'
                   f'M{x1:.1f} {cy - 3:.1f}V{cy + 3:.1f}"/>')
    if p["d_err"]:
        y0, y1 = sy(p["d_err"][0] * factor), sy(p["d_err"][1] * factor)
        out.append(f'<path class="err" d="M{cx:.1f} {y0:.1f}V{y1:.1f}M{cx - 3:.1f} {y0:.1f}H{cx + 3:.1f}'
                   f'M{cx - 3:.1f} {y1:.1f}H{cx + 3:.1f}"/>')
    return "".join(out)


def _obstacles(p: dict, sx, sy, factor: float) -> list[tuple]:
    """Boxes a label must not cover: the point and its error bars (a label across a bar hides where it ends)."""
    cx, cy = sx(p["x"]), sy(p["delta"] * factor)
    boxes = [(cx - 6, cy - 6, cx + 6, cy + 6, "point")]
    if p["x_err"]:
        boxes.append((sx(p["x_err"][0]) - 1, cy - 4, sx(p["x_err"][1]) + 1, cy + 4, "bar"))
    if p["d_err"]:
        ends = sorted((sy(p["d_err"][0] * factor), sy(p["d_err"][1] * factor)))
        boxes.append((cx - 4, ends[0] - 1, cx + 4, ends[1] + 1, "bar"))
    return boxes


def pareto_figure(rows: list[Row], shape: str, metric: str | None, chosen: set | None = None) -> str:
    """Speed-up (x) against the quality delta to fp32 (y) for one shape, with 95 % intervals as error bars on both
    axes, the Pareto front joined, and a numbered key below. `chosen` holds id()s of the recommended rows."""
    points = _points(rows, metric, chosen or set()) if metric else []
    if not points:
        return '<p class="empty">No rows with both a speed-up and a quality delta.</p>'
    factor, unit = _quality_unit([p["quality"] for p in points])
    lower = _lower_is_better(points[0]["quality"])
    xs = [v for p in points for v in (p["x"], *(p["x_err"] or ()))]
    ys = [v * factor for p in points for v in (p["delta"], *(p["d_err"] or ()))]
    x_span, y_span = _span(xs, 1.0), _span(ys, 0.0)
    left, right, top, bottom, height = 78, 16, 14, 50, 400
    frame = (left, top, _WIDTH - right, height - bottom)
    sx = lambda v: left + (v - x_span[0]) / (x_span[1] - x_span[0]) * (frame[2] - left)
    # Up is always better: a perplexity that falls is a gain, so its axis runs the other way.
    sy = (lambda v: top + (v - y_span[0]) / (y_span[1] - y_span[0]) * (frame[3] - top)) if lower else \
        (lambda v: top + (y_span[1] - v) / (y_span[1] - y_span[0]) * (frame[3] - top))
    body: list[str] = []
    _axes(body, sx, sy, x_span, y_span, frame)
    # The title must fit the plot's height (~330 px) when rotated.
    y_title = f"Δ {_clip(metric, 24)} vs " + ("fp32 (reversed: up is better)" if lower else
                                             "PyTorch fp32" + (" (points)" if unit == "pt" else ""))
    body.append(f'<text x="{(left + frame[2]) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
                f"speed-up vs PyTorch fp32 (×)</text>"
                f'<text transform="translate(14 {(top + frame[3]) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                f"{_esc(y_title)}</text>")
    body += [_error_bars(p, sx, sy, factor) for p in points]
    front = _pareto([(p["x"], -p["delta"] if lower else p["delta"]) for p in points])
    line = sorted((points[i]["x"], points[i]["delta"] * factor) for i in front)
    body.append('<polyline class="pareto-line" points="' + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
                + '"/>')
    taken = [box for p in points for box in _obstacles(p, sx, sy, factor)]
    key = []
    # Front points are labelled first: when space runs out it is the dominated ones that fall back to a number.
    for index in sorted(range(len(points)), key=lambda i: (i not in front, i)):
        p = points[index]
        cx, cy, number = sx(p["x"]), sy(p["delta"] * factor), str(index + 1)
        delta = _fmt_delta(p["quality"], factor, unit)
        interval = _fmt_interval(p["x_err"])
        speed = f"{p['x']:.2f}×" + (f" ({interval})" if interval else "")
        marks = [m for m, on in (("Pareto front", index in front), ("recommended", p["chosen"]),
                                 ("measured while busy", p["busy"])) if on]
        tip = f"{p['name']}: {speed} speed-up, {metric} {delta}" + "".join(f" ({m})" for m in marks)
        css = "point pareto" if index in front else "point"
        rings = ('<circle class="ring busy" cx="{0:.1f}" cy="{1:.1f}" r="8"/>' if p["busy"] else "") + \
                ('<circle class="ring chosen" cx="{0:.1f}" cy="{1:.1f}" r="11"/>' if p["chosen"] else "")
        text, tx, ty, anchor = _place_label(cx, cy, [f"{number} {_clip(p['name'], 40)}", number], frame, taken)
        if abs(ty - cy) > 20:  # a label nudged far from its point needs a line to say whose it is
            end = tx - 2 if anchor == "start" else tx + 2
            body.append(f'<line class="leader" x1="{cx:.1f}" y1="{cy:.1f}" x2="{end:.1f}" y2="{ty:.1f}"/>')
        body.append(rings.format(cx, cy) + f'<circle class="{css}" cx="{cx:.1f}" cy="{cy:.1f}" r="5">'
                    f"<title>{_esc(tip)}</title></circle>"
                    f'<text class="plabel" x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" '
                    f'dominant-baseline="middle">{_esc(text)}</text>')
        key.append((index, f"<li><strong>{_esc(p['name'])}</strong> {_esc(speed)} · {_esc(delta)}"
                    + "".join(f' · <span class="mark">{_esc(m)}</span>' for m in marks) + "</li>"))
    svg = _svg(height, body, f"quality delta versus speed-up, {shape}")
    return (f'<figure class="pareto">{svg}<figcaption>{_caption(points, front)}</figcaption>'
            f'<ol class="key">{"".join(item for _, item in sorted(key))}</ol></figure>')


def _caption(points: list[dict], front: set) -> str:
    """What the symbols mean, naming only those this plot draws."""
    joined = " (joined by the line)" if len(front) > 1 else ""
    parts = [f'<span class="sym pareto"></span>Pareto front{joined}: no other point is both at least as fast and '
             "at least as good"]
    if any(p["x_err"] or p["d_err"] for p in points):
        parts.append("bars: 95 % intervals (speed-up over the timing rounds; quality delta paired against fp32 "
                     "on the same inputs where the report has it)")
    if any(p["chosen"] for p in points):
        parts.append('<span class="sym chosen"></span>recommended')
    if any(p["busy"] for p in points):
        parts.append('<span class="sym busy"></span>measured while the machine was busy')
    return "; ".join(parts) + "."


# --- bar charts ------------------------------------------------------------------------------------

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


def latency_chart(rows: list[Row], shape: str) -> str:
    items = []
    for row in rows:
        lat = row.latency_ms if isinstance(row.latency_ms, dict) else {}
        p50, p90 = _num(lat.get("p50")), _num(lat.get("p90"))
        if p50 is not None:
            text = f"{p50:.2f} ms" + (f" (p90 {p90:.2f})" if p90 is not None else "")
            items.append((_label(row), p50, p90, text))
    return _hbar_chart(items, f"p50 latency, {shape}") if items else '<p class="empty">No latency data.</p>'


def size_chart(variants: list) -> str:
    sizes = [(str(v.get("name") or "?"), _num(v.get("size_mb"))) for v in variants if isinstance(v, dict)]
    items = [(name, size, None, f"{size:.1f} MB") for name, size in sizes if size is not None]
    return _hbar_chart(items, "Model size per variant", "bar size") if items else \
        '<p class="empty">No variant sizes recorded.</p>'
