"""Reports: report.json for machines, report.md and a self-contained report.html for people."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .html import render_html
from .markdown import render_markdown
from .model import REPORT_SCHEMA, Quality, Report, Row, as_report

__all__ = ["REPORT_SCHEMA", "Quality", "Report", "Row", "load_report", "render_html", "render_markdown",
           "write_reports"]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(out: Path, report: Report | dict) -> Path:
    """Write the three reports; JSON first, so the human reports never describe numbers the JSON lacks."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = as_report(report)
    _write_atomic(out / "report.json", json.dumps(report.to_dict(), indent=2, sort_keys=False, default=str))
    _write_atomic(out / "report.md", render_markdown(report))
    _write_atomic(out / "report.html", render_html(report))
    return out / "report.html"


def load_report(path: Path) -> Report:
    from ..errors import InputError

    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read report {path}: {exc}") from None
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
        schema = report.get("schema") if isinstance(report, dict) else None
        raise InputError(f"{path} is not a qdeploy report (schema {schema!r})")
    return Report.from_dict(report)
