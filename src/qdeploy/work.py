"""What one cell of a run does, in whichever process an executor gives it (the driver, or a Ray worker on any node).

A cell is a plain function of picklable arguments: it reads artifacts from the run's storage (verified by hash),
writes new ones there, and returns a small JSON-able record. Nothing here knows which executor runs it.
Rows carry the id of the process that measured them, so a speed-up is only called same-process when it is.
"""
from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import evaluation, exporters, quantization, runtimes
from .artifact import Artifact
from .baseline import BASELINE, FP32_VARIANTS, baseline_artifact
from .benchmarking import (LatencyScenario, RssSampler, ThroughputScenario, benchmark_case, measure_concurrent,
                           measure_timings, throughput_runner)
from .benchmarking.generation import GenerationScenario, OnDemand, generates, generation_rounds, measure_generation
from .benchmarking.interleaved import Rounds, RoundsScenario, ratio, run_rounds
from .benchmarking.latency import request
from .benchmarking.memory import release_memory
from .benchmarking.threads import ThreadChoice, choose_threads
from .calibration import CalibrationSource
from .errors import QdeployError
from .evaluation import stats
from .machine import describe
from .models import ModelSource
from .plan import Plan
from .storage import Storage

SESSION = uuid.uuid4().hex[:12]  # this process: rows measured here share it


@dataclass(frozen=True)
class Scenarios:
    """How a run measures, as the benchmarking code takes it: built once from the plan by the pipeline, so that a
    cell receives settings it can use rather than the whole plan."""
    batch_sizes: tuple[int, ...]
    seq_len: int
    latency: LatencyScenario
    generation: GenerationScenario
    rounds: RoundsScenario
    throughput: ThroughputScenario | None  # None: no concurrent streams asked for
    timing: tuple[str, ...]
    threads: int | None  # None: one per core, or what the thread probe finds faster on a busy machine

    @classmethod
    def of(cls, plan: Plan) -> "Scenarios":
        streams = plan.throughput_streams
        return cls(
            batch_sizes=tuple(plan.batch_sizes), seq_len=plan.seq_len,
            latency=LatencyScenario(warmup=plan.warmup, min_reps=plan.min_reps, min_time_s=plan.min_time_s),
            generation=GenerationScenario(prompt_len=plan.seq_len, new_tokens=plan.new_tokens,
                                          batch_sizes=tuple(plan.batch_sizes), min_time_s=plan.min_time_s),
            rounds=RoundsScenario(rounds=plan.rounds),
            throughput=ThroughputScenario(streams=streams, min_requests=plan.min_reps, min_time_s=plan.min_time_s)
            if streams else None,
            timing=tuple(plan.timing), threads=plan.threads)


@dataclass(frozen=True)
class RunContext:
    """Everything a cell needs, sent to every worker. `key` names the run for the per-process caches."""
    key: str
    task: str
    source: ModelSource
    storage: Storage
    metrics: tuple[str, ...]
    eval: dict[str, str]  # metric -> its data file
    calibration: CalibrationSource
    scenarios: Scenarios
    max_positions: int | None
    trust_remote_code: bool = False
    parallel: bool = False  # a Ray executor: methods may fan their own work out as tasks


def variant_record(artifact: Artifact) -> dict[str, Any]:
    from .layer_plan import read_plan

    method = artifact.manifest.method or {}
    record = {"name": artifact.name, "format": artifact.format, "precision": artifact.precision,
              "method": method.get("name"), "config": method.get("config"), "parent": artifact.manifest.parent,
              "size_mb": artifact.size_mb(), "notes": artifact.manifest.notes}
    plan = read_plan(artifact.directory, artifact.manifest)
    if plan is not None:  # the whole plan, so that a report is rendered and compared from report.json alone
        record["layer_plan"] = plan.to_dict()
        record["plan_summary"] = plan.summary()
    return record


def timed(fn):
    """Each cell records how long it took where it ran (benchmarks/ray_scaling.py models a cluster from these)."""
    @functools.wraps(fn)
    def cell(*args, **kwargs) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        return {**result, "elapsed_s": round(time.perf_counter() - t0, 3)}

    return cell


def _skipped(exc: QdeployError) -> dict[str, Any]:
    return {"skipped": str(exc), "session": SESSION}


@timed
def export_cell(run: RunContext, fmt: str) -> dict[str, Any]:
    name = FP32_VARIANTS[fmt]
    artifact = run.storage.existing(name)  # a retried cell whose first attempt finished the artifact
    if artifact is None:
        artifact = exporters.export(run.source, run.task, fmt, run.storage.build_path(name),
                                    trust_remote_code=run.trust_remote_code)
        run.storage.publish(name)
    return {"variant": variant_record(artifact), "session": SESSION}


@timed
def quantize_cell(run: RunContext, variant: str, method: str, config: Any, fmt: str) -> dict[str, Any]:
    try:
        artifact = run.storage.existing(variant)
        if artifact is None:
            parent = run.storage.fetch(FP32_VARIANTS[fmt])
            parallel_map = None
            if run.parallel:
                from .executors.ray_cluster import map_on_this_node as parallel_map
            artifact = quantization.quantize(parent, config, run.storage.build_path(variant), run.calibration,
                                             parallel_map=parallel_map)
            run.storage.publish(variant)
    except QdeployError as exc:
        return _skipped(exc)
    return {"variant": variant_record(artifact), "session": SESSION}


class _Shared:
    """What every cell of a run builds the same way in one process: tokenizer, inputs, the baseline."""

    def __init__(self, run: RunContext):
        from transformers import AutoTokenizer

        from .tasks import architecture, for_generation, model_inputs
        from .tasks import task as get_task

        self.artifacts: dict[str, Artifact] = {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(run.source.path))
        input_names = model_inputs(architecture(run.source.model_type, run.task), self.tokenizer)
        generative = get_task(run.task).generative
        if generative:
            for_generation(self.tokenizer)
        self.baseline = baseline_artifact(run.source, run.task, input_names, run.trust_remote_code,
                                          int(self.tokenizer.pad_token_id or 0))
        # A decoder computes its own positions from the mask; what is fed per request is what a tokenizer gives.
        self.feed_names = ["input_ids", "attention_mask"] if generative else input_names
        self.inputs = {b: benchmark_case(self.tokenizer, self.feed_names, b, run.scenarios.seq_len,
                                         max_positions=run.max_positions) for b in run.scenarios.batch_sizes}
        self.thread_choice: ThreadChoice | None = None  # chosen on first use, by the cell that first needs threads




_SHARED: dict[str, _Shared] = {}


def _shared(run: RunContext) -> _Shared:
    if run.key not in _SHARED:
        _SHARED.clear()  # one run at a time per process; a worker reused for the next run starts afresh
        _SHARED[run.key] = _Shared(run)
    return _SHARED[run.key]


def _artifact(run: RunContext, name: str) -> Artifact:
    shared = _shared(run)
    if name == BASELINE:
        return shared.baseline
    if name not in shared.artifacts:  # verified by hash once per process, not once per cell
        shared.artifacts[name] = run.storage.fetch(name)
    return shared.artifacts[name]


def _threads(run: RunContext, cpus: int | None) -> int:
    """The plan's threads when it names them; else one per core, or fewer when a probe on a busy machine found
    fewer faster (decided once per process, on the PyTorch baseline, before anything is timed)."""
    return _thread_choice(run, cpus).threads


def _thread_choice(run: RunContext, cpus: int | None) -> ThreadChoice:
    if run.scenarios.threads:
        return ThreadChoice(run.scenarios.threads, f"{run.scenarios.threads}: set by the plan")
    shared = _shared(run)
    default = cpus or describe()["cores_physical"] or 1
    if shared.thread_choice is None:
        batch = min(run.scenarios.batch_sizes)
        shared.thread_choice = choose_threads(lambda t: runtimes.load(shared.baseline, "torch", t),
                                              shared.inputs[batch].inputs, default)
    return shared.thread_choice


@timed
def quality_cell(run: RunContext, name: str, runtime: str, cpus: int | None,
                 baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """The quality of one variant on one runtime, with its 95 % interval and its per-item statistics (`items`, which
    the driver pairs with the baseline's and drops from the report). The baseline's cell returns its raw outputs as
    `references`; a variant's cell is given that result, for the metrics that compare outputs with fp32."""
    try:
        shared = _shared(run)
        ctx = evaluation.EvalContext(shared.tokenizer, shared.feed_names, max_positions=run.max_positions)
        ctx.reference.update((baseline or {}).get("references") or {})
        session = runtimes.load(_artifact(run, name), runtime, _threads(run, cpus))
        qualities, raws, items = [], {}, {}
        for metric_name in run.metrics:
            metric = evaluation.metric(metric_name)
            score = metric.evaluate(session, ctx, run.eval.get(metric_name))
            if name == BASELINE and score.raw is not None:
                raws[metric_name] = np.asarray(score.raw)
            bounds = None
            if score.items is not None:
                items[metric_name] = score.items.tolist()
                low, high = stats.interval(metric, score.items)
                bounds = [round(low, 6), round(high, 6)] if np.isfinite([low, high]).all() else None
            qualities.append({"metric": metric_name, "value": round(score.value, 6), "interval": bounds,
                              "n": None if score.items is None else len(score.items)})
    except QdeployError as exc:
        return _skipped(exc)
    return {"qualities": qualities, "references": raws, "items": items, "session": SESSION}


@timed
def bench_cell(run: RunContext, name: str, runtime: str, cpus: int | None) -> dict[str, Any]:
    """Latency (and generation, throughput) of one variant on one runtime, on a machine no other cell shares."""
    try:
        shared = _shared(run)
        artifact = _artifact(run, name)
        threads = _threads(run, cpus)
        rows = _bench(artifact, name, runtime, threads, shared.inputs, run.scenarios)
    except QdeployError as exc:
        return _skipped(exc)
    return {"rows": rows, "session": SESSION, "machine": describe(), "threads": threads,
            "threads_choice": _thread_choice(run, cpus).to_dict()}


@timed
def speed_cell(run: RunContext, pairs: list[tuple[str, str]], cpus: int | None) -> dict[str, Any]:
    """Speed-ups of every (variant, runtime) of one machine type from interleaved rounds: the reference (PyTorch fp32
    when it runs, else the first fp32 artifact), each variant and its runtime's own fp32 are timed alternately in the
    same process, and each ratio is taken per round."""
    shared = _shared(run)
    threads = _threads(run, cpus)
    sessions, skipped, formats = {}, {}, {}
    for name, runtime in pairs:
        key = f"{name}@{runtime}"
        try:
            artifact = _artifact(run, name)
            session = runtimes.load(artifact, runtime, threads)
        except QdeployError as exc:
            skipped[key] = str(exc)
            continue
        formats[key] = artifact.format
        if sessions and generates(session):
            # Loaded once here, so that one that fails is reported; then per turn, beside the reference alone.
            del session
            release_memory()
            session = OnDemand(functools.partial(runtimes.load, artifact, runtime, threads))
        sessions[key] = session
    if not sessions:
        return {"skipped": "; ".join(skipped.values()) or "nothing to time", "session": SESSION}
    reference = next(iter(sessions))  # pairs come baseline first, then the fp32 artifacts, then the variants
    # A language model is timed as it is used: decoding, through each runtime's own generation loop (an engine's is
    # its C++ loop); one prefill call would rank runtimes by what a user waits for once, not per token.
    decoding = all(isinstance(session, OnDemand) or generates(session) for session in sessions.values())
    batches = {}
    for batch in run.scenarios.batch_sizes:
        if decoding:
            rounds, first = _decode_rounds(sessions, shared.inputs[batch].inputs, run.scenarios)
        else:
            timed_calls = {key: request(session, shared.inputs[batch].inputs) for key, session in sessions.items()}
            rounds, first = run_rounds(timed_calls, run.scenarios.rounds), None
        rows = {}
        for key in sessions:
            runtime = key.split("@", 1)[1]
            own_fp32 = f"{FP32_VARIANTS.get(formats[key], BASELINE)}@{runtime}"
            rows[key] = {"vs_reference": rounds.ratio(reference, key).to_dict(),
                         "vs_runtime_fp32": rounds.ratio(own_fp32, key).to_dict() if own_fp32 in sessions else None,
                         "calls_per_round": rounds.calls[key], "cv": round(rounds.cv(key), 4),
                         "ratio_cv": round(rounds.ratio_cv(reference, key), 4),
                         "median_ms": round(float(np.median(rounds.seconds[key])) * 1000, 3),
                         "busy": rounds.noisy(reference, key)}
            if first is not None:
                rows[key]["ttft_vs_reference"] = ratio(first[reference], first[key]).to_dict()
        batches[str(batch)] = {"rows": rows, "busy": rounds.busy, "load": rounds.load,
                               "timed": DECODE_TIMED.format(new=run.scenarios.generation.new_tokens - 1)
                               if decoding else "one model-only call"}
    return {"reference": reference, "batches": batches, "not_timed": skipped, "session": SESSION,
            "threads": threads, "threads_choice": _thread_choice(run, cpus).to_dict(),
            "rounds": run.scenarios.rounds.rounds}


DECODE_TIMED = "decode: the {new} greedy tokens after the first, through each runtime's generation loop"


def _decode_rounds(sessions: dict, inputs: list[dict[str, np.ndarray]], scenarios: Scenarios):
    """Decode seconds per round as Rounds (so that ratios, cvs and noise read as for single calls), and the time
    to the first token of each round."""
    ttft, decode, load, busy = generation_rounds(sessions, inputs, scenarios.generation.new_tokens,
                                                 scenarios.rounds.rounds)
    return Rounds(decode, {key: 1 for key in sessions}, load, busy, scenarios.rounds.cv_threshold), ttft


def _bench(artifact, name, runtime, threads, inputs, scenarios: Scenarios) -> list[dict]:
    batch_sizes = scenarios.batch_sizes
    with RssSampler() as memory:
        t0 = time.perf_counter()
        session = runtimes.load(artifact, runtime, threads)
        load_s = time.perf_counter() - t0
        generated = {}
        if generates(session):
            prompts = {b: inputs[b].inputs for b in batch_sizes}
            generated = {r["batch"]: r for r in measure_generation(session, prompts, scenarios.generation)}
        timed = {b: measure_timings(session, inputs[b], scenarios.latency, scenarios.timing) for b in batch_sizes}
        measurements = [timed[b]["model"] for b in batch_sizes]
        settings = getattr(session, "settings", None)
        concurrent = scenarios.throughput
        # the runtime's own async queue, if it has one
        runner = throughput_runner(session, concurrent.streams if concurrent else 0)
        del session
        throughput = {}
        if concurrent:
            throughput = measure_concurrent(
                runner, lambda: runtimes.load(artifact, runtime, max(1, threads // concurrent.streams)),
                {b: inputs[b].inputs for b in batch_sizes}, concurrent)
            del runner
    size = artifact.size_mb() if artifact.format != "pytorch" else _weights_mb(artifact)
    return [{
        "variant": name, "runtime": runtime, "format": artifact.format, "precision": artifact.precision,
        "batch": m.batch, "seq_len": m.seq_len, "latency_ms": m.latency_ms, "throughput_per_s": m.throughput_per_s,
        "size_mb": size, "peak_rss_mb": round(memory.peak_mb, 1), "rss_delta_mb": memory.delta_mb,
        "load_s": round(load_s, 3), "iterations": m.iterations, "cv": m.cv, "noisy": m.noisy, "what": m.what,
        "timings": {t: x.record() for t, x in timed[m.batch].items() if t != "model"},
        "concurrent": throughput.get(m.batch), "generation": generated.get(m.batch), "runtime_settings": settings,
    } for m in measurements]


def _weights_mb(artifact: Artifact) -> float:
    files = list(artifact.directory.glob("*.safetensors")) or list(artifact.directory.glob("pytorch_model*.bin"))
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)
