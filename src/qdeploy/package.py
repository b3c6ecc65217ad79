"""`qdeploy package`: a self-contained deployment directory (or .tar.gz) with a manifest and a README for its user."""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .artifact import Artifact, finalize, safe_join, staging
from .errors import InputError
from .report.formatting import speedup_text
from .report.model import Report

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def _read_report(report_path: Path) -> dict:
    try:
        return json.loads(Path(report_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read report {report_path}: {exc}") from None


def _measured(artifact: Artifact, report_path: Path | None) -> tuple[list[dict], list[dict]]:
    """The artifact's rows in its run's report, and the recommendations that name it."""
    if report_path is None:
        guess = artifact.directory.parent.parent / "report.json"  # runs/<run>/artifacts/<variant>
        report_path = guess if guess.is_file() else None
    if report_path is None:
        return [], []
    report = Report.from_dict(_read_report(report_path))
    # The manifest keeps these keys of each row as report.json spells them (a package outlives the run's report).
    keep = ("runtime", "batch", "seq_len", "latency_ms", "throughput_per_s", "speedup_vs_fp32", "speedup_interval",
            "busy_reasons", "quality", "qualities", "peak_rss_mb", "rss_delta_mb")
    written = [r.to_dict() for r in report.results if r.variant == artifact.name]
    rows = [{k: row.get(k) for k in keep} for row in written]
    chosen = [c for c in (report.recommendation or {}).get("choices", []) if c.get("variant") == artifact.name]
    return [{**row, "machine": (report.machine or {}).get("cpu_model")} for row in rows], chosen


def recommended_artifact(run_dir: str | Path, batch: int | None = None) -> Path:
    """The artifact directory a run recommends (for one batch size when the recommendations differ by batch)."""
    run_dir = Path(run_dir)
    if not (run_dir / "report.json").is_file():
        raise InputError(f"--recommended needs a run directory holding report.json; {run_dir} has none")
    choices = (_read_report(run_dir / "report.json").get("recommendation") or {}).get("choices") or []
    if batch is not None:
        choices = [c for c in choices if c.get("batch") == batch]
    if not choices:
        raise InputError(f"{run_dir}/report.json holds no recommendation" + (f" for batch {batch}" if batch else ""))
    variants = sorted({c["variant"] for c in choices})
    if len(variants) > 1:
        per_batch = ", ".join(f"batch {c['batch']}: {c['variant']}" for c in choices)
        raise InputError(f"the recommendation differs by batch size ({per_batch}); choose one with --batch")
    if variants[0] == "pytorch-fp32":
        raise InputError("the recommendation is the PyTorch fp32 model itself, which is not an artifact: "
                         f"ship the source model ({choices[0]['headline']})")
    return run_dir / "artifacts" / variants[0]


def _quality(q: dict) -> str:
    if not q:
        return "-"
    text = f"{q.get('metric', '-')} {q.get('value', '')}"
    if q.get("interval"):
        text += f" [{q['interval'][0]:.4g}, {q['interval'][1]:.4g}]"
    if q.get("delta") is not None:
        text += f" (delta {q['delta']:+.4g}"
        text += f", {q['verdict']['phrase']})" if (q.get("verdict") or {}).get("phrase") else ")"
    return text


def _readme(artifact: Artifact, name: str, measured: list[dict], chosen: list[dict]) -> str:
    m = artifact.manifest
    method = (m.method or {}).get("name", "none (fp32 export)")
    lines = [
        f"# {name}", "",
        f"{'An' if m.precision[0] in 'aeiou' else 'A'} {m.precision} {m.format} artifact of "
        f"`{m.source.get('model')}` for {m.task}, made by qdeploy {__version__}.",
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
    if chosen:
        lines += ["", "## Why this artifact", ""]
        lines += [f"- batch {c['batch']} on {c['machine']}: {c['headline']}" + "".join(f"; {r}" for r in c["reasons"])
                  for c in chosen]
    if measured:
        lines += ["", "## Measured", "",
                  "Speed-ups are medians of per-round ratios to PyTorch fp32 timed alternately in the same run, with "
                  "their 95 % interval; quality has its 95 % interval and the paired comparison with fp32.", "",
                  "| machine | runtime | batch | seq | p50 ms | speed-up vs PyTorch fp32 | quality | note |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
        for r in measured:
            note = "busy: " + "; ".join(r["busy_reasons"]) if r.get("busy_reasons") else ""
            speed = speedup_text(r['speedup_vs_fp32'], r['speedup_interval'])
            lines.append(f"| {r['machine']} | {r['runtime']} | {r['batch']} | {r['seq_len']} | "
                         f"{r['latency_ms']['p50']:.2f} | {speed} | "
                         f"{_quality(r.get('quality') or {})} | {note} |")
    return "\n".join(lines) + "\n"


def package(artifact_dir: str | Path, out: str | Path, report: str | Path | None = None) -> Path:
    artifact = Artifact.load(artifact_dir, verify=True)
    out = Path(out)
    suffix = next((s for s in ARCHIVE_SUFFIXES if out.name.endswith(s)), "")
    if suffix and out.exists():
        raise InputError(f"{out} already exists; choose another --out")
    measured, chosen = _measured(artifact, Path(report) if report else None)
    if not suffix:
        return _write(artifact, out, measured, chosen)
    name = out.name[:-len(suffix)]
    out.parent.mkdir(parents=True, exist_ok=True)
    # The directory is built out of the way: `--out sst2.tar.gz` beside an artifact named sst2 must not touch it.
    with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-", dir=out.parent) as scratch:
        directory = _write(artifact, Path(scratch) / name, measured, chosen)
        part = out.with_name(out.name + ".part")
        with tarfile.open(part, "w:gz") as tar:
            tar.add(directory, arcname=name)
        os.replace(part, out)
    return out


def _write(artifact: Artifact, directory: Path, measured, chosen) -> Path:
    with staging(directory) as tmp:
        for rel in artifact.manifest.files:
            if rel == "README.md":
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(safe_join(artifact.directory, rel), target)
        manifest = artifact.manifest
        manifest.package = {"name": directory.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "qdeploy_version": __version__, "from": str(artifact.directory), "measured": measured,
                            "recommended": chosen}
        (tmp / "README.md").write_text(_readme(artifact, directory.name, measured, chosen), encoding="utf-8")
        finalize(tmp, manifest)
    return directory
