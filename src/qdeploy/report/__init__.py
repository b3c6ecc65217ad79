"""Reports: report.json for machines, report.md and a self-contained report.html for people."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .html import render_html
from .markdown import render_markdown

REPORT_SCHEMA = "qdeploy.report/1"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(out: Path, report: dict) -> Path:
    """Write the three reports; JSON first, so the human reports never describe numbers the JSON lacks."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "report.json", json.dumps(report, indent=2, sort_keys=False, default=str))
    _write_atomic(out / "report.md", render_markdown(report))
    _write_atomic(out / "report.html", render_html(report))
    return out / "report.html"


def load_report(path: Path) -> dict:
    from ..errors import InputError

    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read report {path}: {exc}") from None
    if report.get("schema") != REPORT_SCHEMA:
        raise InputError(f"{path} is not a qdeploy report (schema {report.get('schema')!r})")
    return report
