"""`qdeploy package`: a self-contained deployment directory (or .tar.gz) with a manifest and a README for its user."""
from __future__ import annotations

import json
import os
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .artifact import Artifact, finalize, safe_join, staging
from .errors import InputError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def _measured(artifact: Artifact, report_path: Path | None) -> list[dict]:
    if report_path is None:
        guess = artifact.directory.parent.parent / "report.json"  # runs/<run>/artifacts/<variant>
        report_path = guess if guess.is_file() else None
    if report_path is None:
        return []
    try:
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read report {report_path}: {exc}") from None
    keep = ("runtime", "batch", "seq_len", "latency_ms", "throughput_per_s", "speedup_vs_fp32", "quality", "qualities",
            "peak_rss_mb")
    rows = [{k: r.get(k) for k in keep} for r in report.get("results", []) if r.get("variant") == artifact.name]
    return [{**row, "machine": report.get("machine", {}).get("cpu_model")} for row in rows]


def _readme(artifact: Artifact, name: str, measured: list[dict]) -> str:
    m = artifact.manifest
    method = (m.method or {}).get("name", "none (fp32 export)")
    lines = [
        f"# {name}", "",
        f"A {m.precision} {m.format} artifact of `{m.source.get('model')}` for {m.task}, made by qdeploy {__version__}.",
        "", "## Use", "", "```python", "import qdeploy", "", f'predict = qdeploy.load("{name}")',
        'print(predict(["An example sentence."]))', "```", "",
        "Loading verifies the sha256 of every file (listed in manifest.json) and refuses a package that was changed.",
        f"It needs `pip install qdeploy[{'onnxruntime' if m.format == 'onnx' else m.format}]`; nothing else.", "",
        "## What it is", "",
        f"- method: {method}; config: `{json.dumps((m.method or {}).get('config', {}))}`",
        f"- inputs: {', '.join(m.inputs)}; outputs: {', '.join(m.outputs)}",
        f"- runtime configuration: `{json.dumps(m.runtime_config)}`",
        f"- source weights sha256: `{m.source.get('sha256')}`",
        f"- built on: {m.built_on.get('cpu_model')} with "
        f"{', '.join(k for k, v in m.built_on.get('isa', {}).items() if v) or 'no listed ISA extensions'}",
    ]
    if measured:
        lines += ["", "## Measured", "", "| machine | runtime | batch | seq | p50 ms | speed-up vs PyTorch fp32 | quality |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for r in measured:
            q = r.get("quality") or {}
            speed = r.get("speedup_vs_fp32")
            lines.append(f"| {r['machine']} | {r['runtime']} | {r['batch']} | {r['seq_len']} | "
                         f"{r['latency_ms']['p50']:.2f} | {f'{speed:.2f}x' if speed else '-'} | "
                         f"{q.get('metric', '-')} {q.get('value', '')} (delta {q.get('delta', '')}) |")
    return "\n".join(lines) + "\n"


def package(artifact_dir: str | Path, out: str | Path, report: str | Path | None = None) -> Path:
    artifact = Artifact.load(artifact_dir, verify=True)
    out = Path(out)
    archive = out.name.endswith(ARCHIVE_SUFFIXES)
    directory = out.with_name(out.name.split(".t")[0]) if archive else out
    if archive and out.exists():
        raise InputError(f"{out} already exists; choose another --out")
    measured = _measured(artifact, Path(report) if report else None)
    with staging(directory) as tmp:
        for rel in artifact.manifest.files:
            if rel == "README.md":
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(safe_join(artifact.directory, rel), target)
        manifest = artifact.manifest
        manifest.package = {"name": directory.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "qdeploy_version": __version__, "from": str(artifact.directory), "measured": measured}
        (tmp / "README.md").write_text(_readme(artifact, directory.name, measured), encoding="utf-8")
        finalize(tmp, manifest)
    if not archive:
        return directory
    part = out.with_name(out.name + ".part")
    with tarfile.open(part, "w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    os.replace(part, out)
    shutil.rmtree(directory)
    return out
