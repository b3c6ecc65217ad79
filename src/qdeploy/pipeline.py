"""Runs a plan: export -> quantize -> (load, quality, latency) per variant x runtime -> report.

Everything is measured in this one process, PyTorch fp32 first, so every speed-up is a ratio to a baseline measured in
the same run. Bad input is checked before the long work starts.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, evaluation, exporters, models, quantization, runtimes
from .artifact import Artifact, Manifest
from .benchmarking import LatencyScenario, RssSampler, benchmark_inputs, measure_latency
from .calibration import CalibrationSource
from .config import to_dict
from .errors import ConfigError, QdeployError, UnsupportedError
from .machine import describe
from .plan import Plan
from .progress import Progress, Silent
from .report import write_reports
from .tasks import task as get_task

BASELINE = "pytorch-fp32"
FP32_VARIANTS = {"onnx": "onnx-fp32", "openvino": "openvino-fp32"}


@dataclass
class Checked:
    """A plan whose names, options and files have all been checked."""
    plan: Plan
    source: models.ModelSource
    method_configs: list[tuple[str, Any]]
    metrics: list[str]
    runtimes: list[str]
    unavailable: dict[str, str]
    calibration: CalibrationSource


def check(plan: Plan) -> Checked:
    the_task = get_task(plan.task)
    method_configs = [(spec.name, quantization.make_config(spec.name, spec.options)) for spec in plan.methods]
    for runtime in plan.runtimes:
        runtimes.get(runtime)
    if not plan.runtimes:
        raise ConfigError(f"no runtimes to run; choose from: {', '.join(runtimes.names())}")
    metrics = [the_task.default_metric]
    for name, path in plan.eval.items():
        metric = evaluation.metric(name)
        if plan.task not in metric.tasks:
            supported = [n for n in evaluation.names() if plan.task in evaluation.metric(n).tasks]
            raise ConfigError(f"metric {name} does not apply to task {plan.task}; use one of: {', '.join(supported)}")
        evaluation.check_path(path, name)
        if name not in metrics:
            metrics.append(name)
    if not plan.batch_sizes or min(plan.batch_sizes) < 1 or plan.seq_len < 2:
        raise ConfigError("batch sizes must be >= 1 and the sequence length >= 2")
    unavailable = {r: reason for r in plan.runtimes if (reason := runtimes.get(r).unavailable_reason())}
    source = models.resolve(plan.model, allow_pickle=plan.allow_pickle)
    from .tasks import architecture

    architecture(source.model_type)
    cal = plan.calibration
    calibration = CalibrationSource(cal.source, cal.samples, cal.seed, cal.max_length, cal.batch_size)
    if any(quantization.method(name).needs_calibration for name, _ in method_configs):
        calibration.texts()  # fail now, not after the exports, on a missing or empty calibration file
    return Checked(plan, source, method_configs, metrics, list(plan.runtimes), unavailable, calibration)


def default_out(source: models.ModelSource) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{source.name}-{stamp}"


def baseline_artifact(source: models.ModelSource, task_name: str, input_names: list[str]) -> Artifact:
    """The source model itself, run by PyTorch eager; never written (the source may be read-only)."""
    manifest = Manifest(format="pytorch", model_file="config.json", precision="fp32", task=task_name,
                        source=source.describe(), inputs=input_names, outputs=list(get_task(task_name).outputs))
    return Artifact(source.path, manifest)


def _max_positions(source: models.ModelSource) -> int | None:
    import json

    config = json.loads((source.path / "config.json").read_text())
    return config.get("max_position_embeddings")


def run(plan: Plan, progress: Progress | None = None, out: Path | None = None) -> Path:
    progress = progress or Silent()
    checked = check(plan)
    source = checked.source
    max_positions = _max_positions(source)
    if max_positions and plan.seq_len > max_positions:
        raise ConfigError(f"--seq-len {plan.seq_len} is beyond what {source.name} allows ({max_positions} positions)")
    out = Path(out or plan.out or default_out(source))
    if out.exists():
        raise ConfigError(f"{out} already exists; a run never overwrites another: choose another --out")
    (out / "artifacts").mkdir(parents=True)
    threads = plan.threads or describe()["cores_physical"] or os.cpu_count()
    skipped: list[dict[str, str]] = [{"variant": "*", "runtime": r, "reason": reason}
                                     for r, reason in checked.unavailable.items()]
    usable = [r for r in checked.runtimes if r not in checked.unavailable]

    # Export: every format some usable runtime or some method needs.
    wanted = {quantization.method(name).input_format for name, _ in checked.method_configs}
    wanted |= {fmt for r in usable for fmt in runtimes.get(r).formats if fmt in FP32_VARIANTS}
    variants: list[Artifact] = []
    progress.stage("export", len(wanted))
    for fmt in sorted(wanted):
        progress.log(f"export {fmt}")
        variants.append(exporters.export(source, plan.task, fmt, out / "artifacts" / FP32_VARIANTS[fmt],
                                         trust_remote_code=plan.trust_remote_code, progress=progress.log))
        progress.advance(fmt)
    parents = {a.format: a for a in variants}

    progress.stage("quantize", len(checked.method_configs))
    for name, config in checked.method_configs:
        parent = parents[quantization.method(name).input_format]
        try:
            variants.append(quantization.quantize(parent, config, out / "artifacts" / name, checked.calibration,
                                                  progress=progress.log))
        except UnsupportedError as exc:
            skipped.append({"variant": name, "runtime": "*", "reason": str(exc)})
            progress.log(f"skipped {name}: {exc}")
        progress.advance(name)

    input_names = list(variants[0].manifest.inputs) if variants else []
    baseline = baseline_artifact(source, plan.task, input_names)
    cells = [(a, r) for a in [baseline, *variants] for r in usable if runtimes.get(r).supports(a)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    inputs = {b: benchmark_inputs(tokenizer, input_names, b, plan.seq_len, max_positions=max_positions)
              for b in plan.batch_sizes}
    scenario = LatencyScenario(warmup=plan.warmup, min_reps=plan.min_reps, min_time_s=plan.min_time_s)
    ctx = evaluation.EvalContext(tokenizer, input_names)
    rows: list[dict[str, Any]] = []
    baseline_p50: dict[int, float] = {}
    baseline_quality: dict[str, float] = {}
    progress.stage("measure", len(cells))
    for artifact, runtime in cells:
        name = BASELINE if artifact is baseline else artifact.name
        progress.log(f"measure {name} on {runtime}")
        try:
            rows += _measure_cell(artifact, name, runtime, threads, inputs, scenario, checked, ctx,
                                  baseline_p50, baseline_quality, plan)
        except QdeployError as exc:
            skipped.append({"variant": name, "runtime": runtime, "reason": str(exc)})
        progress.advance(f"{name} on {runtime}")
        gc.collect()

    report = {
        "schema": "qdeploy.report/1",
        "qdeploy_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "model": {"source": source.spec, "path": str(source.path), "task": plan.task, "sha256": source.sha256,
                  "model_type": source.model_type},
        "plan": plan.to_dict(),
        "settings": {"threads": threads, **to_dict(scenario), "measured": "model only; inputs tokenized beforehand",
                     "baseline": f"{BASELINE} on torch, same process, same inputs"},
        "metrics": {m: evaluation.metric(m).description for m in checked.metrics},
        "variants": [_variant_record(a, out) for a in variants],
        "skipped": skipped,
        "results": rows,
    }
    return write_reports(out, report)


def _variant_record(artifact: Artifact, out: Path) -> dict[str, Any]:
    method = artifact.manifest.method or {}
    return {"name": artifact.name, "format": artifact.format, "precision": artifact.precision,
            "method": method.get("name"), "config": method.get("config"), "parent": artifact.manifest.parent,
            "size_mb": artifact.size_mb(), "path": artifact.directory.relative_to(out).as_posix(),
            "notes": artifact.manifest.notes}


def _measure_cell(artifact, name, runtime, threads, inputs, scenario, checked, ctx, baseline_p50, baseline_quality,
                  plan) -> list[dict[str, Any]]:
    is_baseline = name == BASELINE
    with RssSampler() as memory:
        t0 = time.perf_counter()
        session = runtimes.load(artifact, runtime, threads)
        load_s = time.perf_counter() - t0
        qualities = []
        for metric_name in checked.metrics:
            metric = evaluation.metric(metric_name)
            value, raw = metric.evaluate(session, ctx, plan.eval.get(metric_name))
            if is_baseline:
                baseline_quality[metric_name] = value
                if raw is not None:
                    ctx.reference[metric_name] = raw
            fp32 = baseline_quality.get(metric_name)
            qualities.append({"metric": metric_name, "value": round(value, 6), "fp32_value": fp32,
                              "delta": None if fp32 is None else round(value - fp32, 6)})
        measurements = [measure_latency(session.run, inputs[b], scenario) for b in plan.batch_sizes]
    del session
    size = artifact.size_mb() if artifact.format != "pytorch" else _weights_mb(artifact)
    rows = []
    for m in measurements:
        if is_baseline:
            baseline_p50[m.batch] = m.latency_ms["p50"]
        base = baseline_p50.get(m.batch)
        rows.append({
            "variant": name, "runtime": runtime, "format": artifact.format, "precision": artifact.precision,
            "batch": m.batch, "seq_len": m.seq_len, "latency_ms": m.latency_ms,
            "throughput_per_s": m.throughput_per_s,
            "speedup_vs_fp32": round(base / m.latency_ms["p50"], 3) if base else None,
            "size_mb": size, "peak_rss_mb": round(memory.peak_mb, 1), "rss_delta_mb": memory.delta_mb,
            "load_s": round(load_s, 3), "iterations": m.iterations, "cv": m.cv, "noisy": m.noisy,
            "quality": qualities[-1] if len(qualities) > 1 else qualities[0], "qualities": qualities,
        })
    return rows


def _weights_mb(artifact: Artifact) -> float:
    files = list(artifact.directory.glob("*.safetensors")) or list(artifact.directory.glob("pytorch_model*.bin"))
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)
