"""The building blocks of the HTML pages (report.html, compare.html): the stylesheet, escaping and tables.

Every string read from a report is escaped exactly once: cells are plain text unless wrapped in ``_Safe``, which only
these modules build, from escaped parts.
"""
from __future__ import annotations

from typing import Any

from .formatting import DASH
from .plot_svg import _esc

# System font stack only: a web font would need a network fetch.
_CSS = """
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#fff;
 max-width:1180px;margin:1.5rem auto;padding:0 1rem}h1{margin-bottom:.2rem}.sub,.note,.empty{color:#59636e}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2rem}.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.5rem 0 1rem}td.noisy,td.busy,.warn{color:#9a6700}
th,td{border:1px solid #d0d7de;padding:.25rem .45rem;text-align:left;vertical-align:top}
th,td.key{background:#f6f8fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td small,th small,.rec small{display:block;color:#59636e;font-size:12px}td.num,td small{white-space:nowrap}
td small.verdict{white-space:normal}
.ok{color:#1a7f37}.bad{color:#cf222e}
.rec{border-left:4px solid #1a7f37;background:#f6fff8;padding:.5rem 1rem;margin:.8rem 0}
.rec.none{border-color:#8c959f;background:#f6f8fa}.rec h3{margin:.2rem 0;font-size:13px;color:#59636e}
.headline{font-size:16px;font-weight:600;margin:.2rem 0}.rec ul{margin:.3rem 0}
ul.kv{margin:0;padding-left:1.1rem}details{margin:.3rem 0 1rem}summary{cursor:pointer;color:#0969da}
figure{margin:.5rem 0}figcaption,ol.key{color:#59636e;font-size:12px}ol.key{columns:2;margin:.3rem 0}
.sym{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:.3em;vertical-align:middle}
.sym.pareto{background:#e45756}.sym.chosen{border:2px solid #1a7f37}.sym.busy{border:2px solid #bf8700}
svg{width:100%;max-width:760px;height:auto;display:block;font-size:12px}svg text{fill:#1f2328}
.bar{fill:#4c78a8}.bar.size{fill:#72b7b2}.whisker{stroke:#1f2328;stroke-width:1.5}.plabel{font-size:11px}
.axis{stroke:#59636e}.grid{stroke:#eaeef2}.ref{stroke:#8c959f;stroke-dasharray:4 3}.err{stroke:#59636e;fill:none}
.leader{stroke:#8c959f;stroke-width:.75}
.point{fill:#8c959f;stroke:#fff}.point.pareto{fill:#e45756;stroke:#7a1f1a}.ring{fill:none;stroke-width:2}
.ring.busy{stroke:#bf8700}.ring.chosen{stroke:#1a7f37}.pareto-line{fill:none;stroke:#e45756;stroke-width:1.5}
"""


class _Safe(str):
    """Markup already escaped by this module."""


def _as(value: Any, kind: type) -> Any:
    # Hand-edited or truncated reports may hold null or the wrong type anywhere.
    return value if isinstance(value, kind) else kind()


def _h(value: Any) -> str:
    return value if isinstance(value, _Safe) else _esc(value)


def _table(header: list[str] | None, rows: list[list[tuple[Any, str]]]) -> str:
    """rows hold (content, css class) pairs; content is escaped here unless it is _Safe."""
    head = "".join(f"<th>{_h(h)}</th>" for h in header or [])
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    cell = lambda text, css: f'<td class="{css}">{_h(text)}</td>' if css else f"<td>{_h(text)}</td>"
    body = "".join("<tr>" + "".join(cell(t, c) for t, c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table>{head}<tbody>{body}</tbody></table></div>'


def _two_lines(main: str, detail: str) -> _Safe:
    return _Safe(_esc(main) + (f"<small>{_esc(detail)}</small>" if detail else ""))


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return DASH if value is None or value == "" else str(value)


def _value_html(value: Any) -> _Safe:
    """Nested settings as nested lists of "key value" pairs: a Python repr such as {'a': 1} is not for people."""
    if isinstance(value, dict):
        if not value:
            return _Safe(DASH)
        items = "".join(f"<li><strong>{_esc(k)}</strong> {_value_html(v)}</li>" for k, v in value.items())
        return _Safe(f'<ul class="kv">{items}</ul>')
    if isinstance(value, (list, tuple)):
        if not value:
            return _Safe("none")
        if not any(isinstance(v, (dict, list, tuple)) for v in value):
            return _Safe(_esc(", ".join(_scalar(v) for v in value)))
        return _Safe('<ul class="kv">' + "".join(f"<li>{_value_html(v)}</li>" for v in value) + "</ul>")
    return _Safe(_esc(_scalar(value)))
