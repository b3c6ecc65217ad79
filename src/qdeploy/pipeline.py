"""Runs a plan: export -> quantize -> (load, quality, latency) per variant x runtime -> report.

Everything is measured in this one process, PyTorch fp32 first, so every speed-up is a ratio to a baseline measured in
the same run. Bad input is checked before the long work starts.
"""
from __future__ import annotations

import gc
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, evaluation, exporters, models, quantization, runtimes
from .artifact import Artifact, Manifest
from .benchmarking.generation import GenerationScenario, generates, measure_generation
from .benchmarking import (TIMINGS, LatencyScenario, RssSampler, ThroughputScenario, benchmark_case,
                           measure_concurrent, measure_timings, throughput_runner)
from .calibration import CalibrationSource
from .cells import PLAN_FILE, CellStore, remove_stale_staging
from .config import to_dict
from .errors import ConfigError, QdeployError, UnsupportedError
from .machine import describe
from .plan import Plan
from .progress import Progress, Silent
from .report import write_reports
from .tasks import architecture, check_task, for_generation, model_inputs
from .tasks import task as get_task

BASELINE = "pytorch-fp32"
AUTO = "auto"  # every registered runtime; those missing here are listed as not run
FP32_VARIANTS = {"onnx": "onnx-fp32", "openvino": "openvino-fp32"}


@dataclass
class Checked:
    """A plan whose names, options and files have all been checked."""
    plan: Plan
    source: models.ModelSource
    method_configs: list[tuple[str, str, Any]]  # (variant, method, config)
    metrics: list[str]
    runtimes: list[str]
    unavailable: dict[str, str]
    calibration: CalibrationSource


def check(plan: Plan) -> Checked:
    the_task = get_task(plan.task)
    method_configs = [(spec.variant, spec.name, quantization.make_config(spec.name, spec.options))
                      for spec in plan.methods]
    auto = tuple(plan.runtimes) == (AUTO,)
    wanted_runtimes = runtimes.names() if auto else list(plan.runtimes)
    for runtime in wanted_runtimes:
        runtimes.get(runtime)
    if not wanted_runtimes:
        raise ConfigError(f"no runtimes to run; choose from: {AUTO}, {', '.join(runtimes.names())}")
    metrics = [the_task.default_metric]
    for name, path in plan.eval.items():
        metric = evaluation.metric(name)
        if plan.task not in metric.tasks:
            supported = [n for n in evaluation.names() if plan.task in evaluation.metric(n).tasks]
            raise ConfigError(f"metric {name} does not apply to task {plan.task}; use one of: {', '.join(supported)}")
        if not metric.parses_path:
            path = evaluation.check_path(path, name)
        if metric.read:
            metric.read(path)  # a file the metric cannot parse fails now, not after the exports
        if name not in metrics:
            metrics.append(name)
    if not plan.batch_sizes or min(plan.batch_sizes) < 1 or plan.seq_len < 2:
        raise ConfigError("batch sizes must be >= 1 and the sequence length >= 2")
    if "model" not in plan.timing:
        # Speed-ups, comparisons and throughput are all built on the model-only timing; end-to-end comes beside it.
        raise ConfigError("timing must include model (e.g. model,end-to-end); got "
                          f"{','.join(plan.timing) or 'nothing'}")
    unavailable = {r: reason for r in wanted_runtimes if (reason := runtimes.get(r).unavailable_reason())}
    if unavailable and not auto:
        # Asked for by name: an error. Under `auto`, runtimes missing here are reported as not run.
        available = [r for r in runtimes.names() if runtimes.get(r).unavailable_reason() is None]
        name, reason = next(iter(unavailable.items()))
        raise UnsupportedError(f"runtime {name} is not available: {reason}; available here: {', '.join(available)}")
    source = models.resolve(plan.model, allow_pickle=plan.allow_pickle)
    check_task(architecture(source.model_type), plan.task)
    cal = plan.calibration
    calibration = CalibrationSource(cal.source, cal.samples, cal.seed, cal.max_length, cal.batch_size)
    if any(quantization.method(name).needs_calibration for _, name, _ in method_configs):
        calibration.texts()  # fail now, not after the exports, on a missing or empty calibration file
    return Checked(plan, source, method_configs, metrics, wanted_runtimes, unavailable, calibration)


def default_out(source: models.ModelSource) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{source.name}-{stamp}"


def baseline_artifact(source: models.ModelSource, task_name: str, input_names: list[str],
                      trust_remote_code: bool = False, pad_token_id: int = 0) -> Artifact:
    """The source model itself, run by PyTorch eager; never written (the source may be read-only)."""
    runtime_config: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if get_task(task_name).generative:
        config = json.loads((source.path / "config.json").read_text())
        eos = config.get("eos_token_id")
        runtime_config["decoder"] = {"pad_token_id": pad_token_id, "eos_token_id": eos if isinstance(eos, int) else None}
    if get_task(task_name).exporter == "seq2seq":
        runtime_config["seq2seq"] = {}  # PyTorch reads the start, pad and eos ids from the model's config
    manifest = Manifest(format="pytorch", model_file="config.json", precision="fp32", task=task_name,
                        source=source.describe(), inputs=input_names, outputs=list(get_task(task_name).outputs),
                        runtime_config=runtime_config)
    return Artifact(source.path, manifest)


def _max_positions(source: models.ModelSource) -> int | None:
    import json

    config = json.loads((source.path / "config.json").read_text())
    return config.get("max_position_embeddings")


def prepare_out(plan: Plan, source: models.ModelSource, out: Path | None, resume: bool) -> Path:
    if resume:
        if not out or not (Path(out) / PLAN_FILE).is_file():
            raise ConfigError(f"--resume needs the directory of an earlier run (with {PLAN_FILE}); {out} is not one")
        return Path(out)
    out = Path(out or plan.out or default_out(source))
    if out.exists():
        raise ConfigError(f"{out} already exists; a run never overwrites another: choose another --out, "
                          f"or continue it with --resume {out}")
    (out / "artifacts").mkdir(parents=True)
    tmp = out / (PLAN_FILE + ".part")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2), encoding="utf-8")
    os.replace(tmp, out / PLAN_FILE)
    return out


def load_resumable(out: Path) -> Plan:
    """The plan an interrupted run was started with: a resumed run finishes the same work."""
    from .plan import from_dict

    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"--resume needs the directory of an earlier run (with {PLAN_FILE}); {out} is not one")
    return from_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))


def _existing(target: Path) -> Artifact | None:
    """A finished artifact from an earlier, interrupted process (verified by hash), or None."""
    if (target / "manifest.json").is_file():
        return Artifact.load(target, verify=True)
    return None


def run(plan: Plan, progress: Progress | None = None, out: Path | None = None, resume: bool = False) -> Path:
    progress = progress or Silent()
    checked = check(plan)
    source = checked.source
    max_positions = _max_positions(source)
    if max_positions and plan.seq_len > max_positions:
        raise ConfigError(f"--seq-len {plan.seq_len} is beyond what {source.name} allows ({max_positions} positions)")
    out = prepare_out(plan, source, out, resume)
    for name in remove_stale_staging(out / "artifacts"):
        progress.log(f"removed unfinished {name} left by an interrupted run")
    store = CellStore(out)
    session_id = uuid.uuid4().hex[:12]
    threads = plan.threads or describe()["cores_physical"] or os.cpu_count()
    skipped: list[dict[str, str]] = [{"variant": "(all)", "runtime": r, "reason": reason}
                                     for r, reason in checked.unavailable.items()]
    usable = [r for r in checked.runtimes if r not in checked.unavailable]

    # Export: every format some usable runtime or some method needs.
    wanted = {quantization.method(name).input_format for _, name, _ in checked.method_configs}
    wanted |= {fmt for r in usable for fmt in runtimes.get(r).formats if fmt in FP32_VARIANTS}
    variants: list[Artifact] = []
    progress.stage("export", len(wanted))
    for fmt in sorted(wanted):
        target = out / "artifacts" / FP32_VARIANTS[fmt]
        artifact = _existing(target)
        if artifact is None:
            progress.log(f"export {fmt}")
            artifact = exporters.export(source, plan.task, fmt, target, trust_remote_code=plan.trust_remote_code,
                                        progress=progress.log)
        variants.append(artifact)
        progress.advance(fmt)
    parents = {a.format: a for a in variants}

    progress.stage("quantize", len(checked.method_configs))
    for variant, name, config in checked.method_configs:
        target = out / "artifacts" / variant
        artifact = _existing(target)
        try:
            if artifact is None:
                artifact = quantization.quantize(parents[quantization.method(name).input_format], config, target,
                                                  checked.calibration, progress=progress.log)
            variants.append(artifact)
        except UnsupportedError as exc:
            skipped.append({"variant": variant, "runtime": "(all)", "reason": str(exc)})
            progress.log(f"skipped {variant}: {exc}")
        progress.advance(variant)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    input_names = model_inputs(architecture(source.model_type), tokenizer)
    generative = get_task(plan.task).generative
    if generative:
        for_generation(tokenizer)
    baseline = baseline_artifact(source, plan.task, input_names, plan.trust_remote_code,
                                 int(tokenizer.pad_token_id or 0))
    # A decoder computes its own positions from the mask; what is fed per request is what a tokenizer gives.
    feed_names = ["input_ids", "attention_mask"] if generative else input_names
    cells = [(a, r) for a in [baseline, *variants] for r in usable if runtimes.get(r).supports(a)]
    inputs = {b: benchmark_case(tokenizer, feed_names, b, plan.seq_len, max_positions=max_positions)
              for b in plan.batch_sizes}
    scenario = LatencyScenario(warmup=plan.warmup, min_reps=plan.min_reps, min_time_s=plan.min_time_s)
    ctx = evaluation.EvalContext(tokenizer, feed_names, max_positions=max_positions)
    generation = GenerationScenario(prompt_len=plan.seq_len, new_tokens=plan.new_tokens,
                                    batch_sizes=tuple(plan.batch_sizes), min_time_s=plan.min_time_s)
    for metric_name in checked.metrics:
        reference = store.get_array("reference", metric_name)
        if reference is not None:
            ctx.reference[metric_name] = reference
    rows: list[dict[str, Any]] = []
    progress.stage("measure", len(cells))
    for artifact, runtime in cells:
        name = BASELINE if artifact is baseline else artifact.name
        cell_name = f"{name}@{runtime}"
        record = store.get("measure", cell_name)
        if record is None:
            progress.log(f"measure {name} on {runtime}")
            try:
                record = {"rows": _measure_cell(artifact, name, runtime, threads, inputs, scenario, checked, ctx,
                                                plan, store, generation), "session": session_id}
            except QdeployError as exc:
                record = {"skipped": str(exc), "session": session_id}
            store.put("measure", cell_name, record)
        if "skipped" in record:
            skipped.append({"variant": name, "runtime": runtime, "reason": record["skipped"]})
        for row in record.get("rows", []):
            rows.append({**row, "session": record["session"]})
        progress.advance(f"{name} on {runtime}")
        gc.collect()
    _relate_to_baseline(rows)

    report = {
        "schema": "qdeploy.report/1",
        "qdeploy_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "model": {"source": source.spec, "path": str(source.path), "task": plan.task, "sha256": source.sha256,
                  "model_type": source.model_type},
        "plan": plan.to_dict(),
        "settings": {"threads": threads, **to_dict(scenario), "throughput_streams": plan.throughput_streams,
                     "measured": {t: TIMINGS.get(t).what for t in plan.timing},
                     "baseline": f"{BASELINE} on torch, same inputs; same process unless baseline_same_process "
                                 "is false (a resumed run)",
                     "sessions": sorted({r["session"] for r in rows})},
        "metrics": {m: evaluation.metric(m).description for m in checked.metrics},
        "variants": [_variant_record(a, out) for a in variants],
        "skipped": skipped,
        "results": rows,
    }
    return write_reports(out, report)


def _relate_to_baseline(rows: list[dict[str, Any]]) -> None:
    """Speed-ups and quality deltas against the PyTorch fp32 rows of the same batch and sequence length."""
    base = {(r["batch"], r["seq_len"]): r for r in rows if r["variant"] == BASELINE}
    base_quality = {q["metric"]: q["value"] for r in base.values() for q in r["qualities"]}
    # The second baseline: the same runtime running the fp32 artifact of the same format (what int8 alone buys).
    runtime_base = {(r["runtime"], r["format"], r["batch"], r["seq_len"]): r for r in rows
                    if r["variant"] in FP32_VARIANTS.values()}
    for row in rows:
        ref = base.get((row["batch"], row["seq_len"]))
        row["speedup_vs_fp32"] = round(ref["latency_ms"]["p50"] / row["latency_ms"]["p50"], 3) if ref else None
        for timing, measured in (row.get("timings") or {}).items():
            ref_timing = ((ref or {}).get("timings") or {}).get(timing)
            measured["speedup_vs_fp32"] = (round(ref_timing["latency_ms"]["p50"] / measured["latency_ms"]["p50"], 3)
                                           if ref_timing else None)
        if row.get("concurrent") and ref and ref.get("concurrent"):
            row["concurrent"]["speedup_vs_fp32"] = round(row["concurrent"]["items_per_s"]
                                                         / ref["concurrent"]["items_per_s"], 3)
        same = runtime_base.get((row["runtime"], row["format"], row["batch"], row["seq_len"]))
        row["speedup_vs_runtime_fp32"] = (round(same["latency_ms"]["p50"] / row["latency_ms"]["p50"], 3)
                                          if same else None)
        row["baseline_same_process"] = bool(ref) and ref["session"] == row["session"]
        for q in row["qualities"]:
            fp32 = base_quality.get(q["metric"])
            q["fp32_value"] = fp32
            q["delta"] = None if fp32 is None else round(q["value"] - fp32, 6)
            # Signed so that positive is better: a perplexity that rises is a loss.
            higher = evaluation.metric(q["metric"]).higher_is_better
            q["gain"] = None if q["delta"] is None else (q["delta"] if higher else -q["delta"])
        gen, ref_gen = row.get("generation"), (ref or {}).get("generation")
        if gen and ref_gen:
            gen["decode_speedup_vs_fp32"] = round(gen["decode_tokens_per_s"] / ref_gen["decode_tokens_per_s"], 3)
            gen["ttft_speedup_vs_fp32"] = round(ref_gen["ttft_ms"] / gen["ttft_ms"], 3)
        row["quality"] = row["qualities"][-1] if row["qualities"] else None


def _variant_record(artifact: Artifact, out: Path) -> dict[str, Any]:
    method = artifact.manifest.method or {}
    return {"name": artifact.name, "format": artifact.format, "precision": artifact.precision,
            "method": method.get("name"), "config": method.get("config"), "parent": artifact.manifest.parent,
            "size_mb": artifact.size_mb(), "path": artifact.directory.relative_to(out).as_posix(),
            "notes": artifact.manifest.notes}


def _measure_cell(artifact, name, runtime, threads, inputs, scenario, checked, ctx, plan, store,
                  generation: GenerationScenario) -> list[dict]:
    is_baseline = name == BASELINE
    with RssSampler() as memory:
        t0 = time.perf_counter()
        session = runtimes.load(artifact, runtime, threads)
        load_s = time.perf_counter() - t0
        qualities = []
        for metric_name in checked.metrics:
            metric = evaluation.metric(metric_name)
            value, raw = metric.evaluate(session, ctx, plan.eval.get(metric_name))
            if is_baseline and raw is not None:
                # Kept on disk too: a resumed run compares its variants with these same outputs.
                ctx.reference[metric_name] = raw
                store.put_array("reference", metric_name, np.asarray(raw))
            qualities.append({"metric": metric_name, "value": round(value, 6)})
        generated = {}
        if generates(session):
            prompts = {b: inputs[b].inputs for b in plan.batch_sizes}
            generated = {r["batch"]: r for r in measure_generation(session, prompts, generation)}
        timed = {b: measure_timings(session, inputs[b], scenario, plan.timing) for b in plan.batch_sizes}
        measurements = [timed[b]["model"] for b in plan.batch_sizes]
        settings = getattr(session, "settings", None)
        runner = throughput_runner(session, plan.throughput_streams)  # the runtime's own async queue, if it has one
        del session
        throughput = {}
        if plan.throughput_streams:
            streams = plan.throughput_streams
            concurrent = ThroughputScenario(streams=streams, min_requests=plan.min_reps, min_time_s=plan.min_time_s)
            throughput = measure_concurrent(
                runner, lambda: runtimes.load(artifact, runtime, max(1, threads // streams)),
                {b: inputs[b].inputs for b in plan.batch_sizes}, concurrent)
            del runner
    size = artifact.size_mb() if artifact.format != "pytorch" else _weights_mb(artifact)
    return [{
        "variant": name, "runtime": runtime, "format": artifact.format, "precision": artifact.precision,
        "batch": m.batch, "seq_len": m.seq_len, "latency_ms": m.latency_ms, "throughput_per_s": m.throughput_per_s,
        "size_mb": size, "peak_rss_mb": round(memory.peak_mb, 1), "rss_delta_mb": memory.delta_mb,
        "load_s": round(load_s, 3), "iterations": m.iterations, "cv": m.cv, "noisy": m.noisy, "what": m.what,
        "timings": {t: x.record() for t, x in timed[m.batch].items() if t != "model"},
        "qualities": qualities, "concurrent": throughput.get(m.batch), "generation": generated.get(m.batch),
        "runtime_settings": settings,
    } for m in measurements]


def _weights_mb(artifact: Artifact) -> float:
    files = list(artifact.directory.glob("*.safetensors")) or list(artifact.directory.glob("pytorch_model*.bin"))
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)
