"""`qdeploy bench`: latency of artifacts on their runtimes and, with `--baseline`, their speed-up over it from
interleaved rounds (the same ratio and interval as `qdeploy run`)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .errors import ConfigError, InputError, UnsupportedError

TORCH = "torch"


def _baseline(spec: str, artifacts: list):
    """(artifact, runtime, label) for `--baseline torch` (the source model the first artifact was exported from) or
    `--baseline ARTIFACT` (run on the first available runtime that supports it)."""
    from . import runtimes
    from .artifact import Artifact

    if spec != TORCH:
        base = Artifact.load(spec, verify=True)
        for name in runtimes.names():
            runtime = runtimes.get(name)
            if runtime.supports(base) and runtime.unavailable_reason() is None:
                return base, name, f"{base.name} on {name}"
        raise ConfigError(f"no available runtime runs the baseline {spec} ({base.format})")
    reason = runtimes.get(TORCH).unavailable_reason()
    if reason:
        raise ConfigError(f"--baseline torch needs PyTorch: {reason}")
    first = artifacts[0].manifest
    path = Path(first.source.get("path", ""))
    if not (path / "config.json").is_file():
        raise InputError(f"--baseline torch: {artifacts[0].name} was exported from {first.source.get('path')}, "
                         "which is not here; pass --baseline ARTIFACT instead")
    return None, TORCH, f"PyTorch fp32 ({first.source.get('model', path)})"


def _tokenizer(artifact):
    from transformers import AutoTokenizer

    from .tasks import for_generation

    tokenizer = AutoTokenizer.from_pretrained(str(artifact.directory))
    return for_generation(tokenizer) if _generative(artifact.manifest.task) else tokenizer


def _generative(task_name: str) -> bool:
    from .tasks import task

    return task(task_name).generative


def _feeds(artifact) -> list[str]:
    """A decoder computes its own positions from the mask: what is fed per request is what a tokenizer gives."""
    return ["input_ids", "attention_mask"] if _generative(artifact.manifest.task) else list(artifact.manifest.inputs)


def cmd_bench(args, console):
    from . import runtimes
    from .artifact import Artifact
    from .benchmarking import LatencyScenario
    from .benchmarking.interleaved import RoundsScenario

    scenario = LatencyScenario(warmup=args.warmup, min_reps=args.min_reps, min_time_s=args.min_time_s)
    rounds = RoundsScenario(rounds=args.rounds)
    for name in args.runtimes or []:
        runtimes.get(name)  # an unknown runtime fails now, with the list, before any graph library is imported
    for artifact in [Artifact.load(directory, graph=False) for directory in args.artifacts]:
        positions = artifact.max_positions()  # every mistake before the first (slow) import of a graph library
        if positions and args.seq_len > positions:
            raise ConfigError(f"--seq-len {args.seq_len} is beyond what {artifact.name} allows ({positions} positions)")
    artifacts = [Artifact.load(directory, verify=True) for directory in args.artifacts]
    baseline = _baseline(args.baseline, artifacts) if args.baseline else None
    if baseline and baseline[0]:
        positions = baseline[0].max_positions()
        if positions and args.seq_len > positions:
            raise ConfigError(f"--seq-len {args.seq_len} is beyond what {baseline[0].name} allows "
                              f"({positions} positions)")
    plans = _plans(args, artifacts)  # a runtime that cannot run an artifact fails now, not under the progress bars
    if baseline and baseline[0] is None:
        from . import models
        from .baseline import baseline_artifact

        first = artifacts[0].manifest
        source = models.resolve(first.source["path"], allow_pickle=bool(first.source.get("pickle")))
        pad = int(_tokenizer(artifacts[0]).pad_token_id or 0)
        baseline = (baseline_artifact(source, first.task, list(first.inputs), pad_token_id=pad), TORCH, baseline[2])
    from .cli_progress import RichProgress

    with RichProgress(console) as progress:
        records, pairs = _latencies(args, plans, scenario, progress)
        ratios = _ratios(args, baseline, pairs, rounds, progress) if baseline else {}
    _print(console, records, ratios, baseline[2] if baseline else None)
    if args.out:
        for record in records:
            record["vs_baseline"] = ratios.get((record["artifact"], record["runtime"], record["batch"]))
        Path(args.out).write_text(json.dumps(records, indent=2), encoding="utf-8")


def _plans(args, artifacts) -> list[tuple]:
    """(artifact, runtime) to measure: the named runtimes (each must run each artifact), or every available one that
    can."""
    from . import runtimes

    plans = []
    for artifact in artifacts:
        if not args.runtimes:
            plans += [(artifact, n) for n in runtimes.names()
                      if runtimes.get(n).supports(artifact) and runtimes.get(n).unavailable_reason() is None]
            continue
        for name in args.runtimes:
            runtime = runtimes.get(name)
            if not runtime.supports(artifact):
                raise UnsupportedError(f"runtime {name} cannot run {artifact.format} artifacts such as {artifact.name} "
                                       f"(it runs: {', '.join(runtime.formats)})")
            if runtime.unavailable_reason():
                raise UnsupportedError(f"runtime {name} is not available here: {runtime.unavailable_reason()}")
            plans.append((artifact, name))
    return plans


def _latencies(args, plans, scenario, progress):
    from . import runtimes
    from .benchmarking import benchmark_case, measure_timings
    from .benchmarking.generation import GenerationScenario, generates, measure_generation

    generation = GenerationScenario(prompt_len=args.seq_len, new_tokens=args.new_tokens or 64,
                                    batch_sizes=tuple(args.batch_sizes), min_time_s=args.min_time_s)
    progress.stage("latency", len(plans) * len(args.batch_sizes))
    records, pairs = [], []
    for artifact, runtime in plans:
        tokenizer = _tokenizer(artifact)
        session = runtimes.load(artifact, runtime, args.threads)
        pairs.append((artifact, runtime, tokenizer))
        cases = {batch: benchmark_case(tokenizer, _feeds(artifact), batch, args.seq_len)
                 for batch in args.batch_sizes}
        decoded = {}
        if generates(session):  # prefill alone says little about a language model: decode speed too
            decoded = {r["batch"]: r for r in measure_generation(
                session, {b: case.inputs for b, case in cases.items()}, generation)}
        for batch, case in cases.items():
            for timing, m in measure_timings(session, case, scenario, args.timing).items():
                records.append({"artifact": str(artifact.directory), "runtime": runtime, "timing": timing,
                                **dataclasses.asdict(m), "generation": decoded.get(batch)})
            progress.advance(f"{artifact.name} on {runtime}, batch {batch}")
        del session
    return records, pairs


def _ratios(args, baseline, pairs, rounds, progress) -> dict:
    """Per batch size, the baseline and every (artifact, runtime) loaded together and timed alternately."""
    from . import runtimes
    from .benchmarking import benchmark_case
    from .benchmarking.interleaved import run_rounds
    from .benchmarking.latency import request

    base_artifact, base_runtime, _ = baseline
    progress.stage("rounds", rounds.rounds * len(args.batch_sizes))
    loaded = {"baseline": (base_artifact, runtimes.load(base_artifact, base_runtime, args.threads))}
    for artifact, runtime, _ in pairs:
        loaded[(str(artifact.directory), runtime)] = (artifact, runtimes.load(artifact, runtime, args.threads))
    tokenizer = pairs[0][2]  # one tokenizer, so that every session gets the same tokens
    ratios = {}
    for batch in args.batch_sizes:
        calls = {key: request(session, benchmark_case(tokenizer, _feeds(artifact), batch, args.seq_len).inputs)
                 for key, (artifact, session) in loaded.items()}
        measured = run_rounds(calls, rounds, tick=lambda: progress.advance(f"batch {batch}"))
        for key in loaded:
            if key != "baseline":
                ratio = measured.ratio("baseline", key).to_dict()
                ratios[(*key, batch)] = {**ratio, "busy": measured.noisy("baseline", key)}
    return ratios


def _print(console, records, ratios, baseline_label):
    from rich.table import Table

    from .report.formatting import speedup_text

    columns = ["artifact", "runtime", "timing", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "items/s", "cv"]
    if baseline_label:
        columns.append("vs baseline (95 %)")
    if any(r["generation"] for r in records):
        columns += ["TTFT ms", "decode tok/s"]
    table = Table(*columns, caption=f"baseline: {baseline_label}" if baseline_label else None)
    for r in records:
        cells = [Path(r["artifact"]).name, r["runtime"], r["timing"], str(r["batch"]), str(r["seq_len"]),
                 f"{r['latency_ms']['p50']:.2f}", f"{r['latency_ms']['p90']:.2f}", f"{r['latency_ms']['p99']:.2f}",
                 f"{r['throughput_per_s']:.1f}", f"{r['cv']:.1%}" + (" noisy" if r["noisy"] else "")]
        if baseline_label:
            ratio = ratios.get((r["artifact"], r["runtime"], r["batch"])) if r["timing"] == "model" else None
            text = speedup_text(ratio["median"], ratio["interval"]) if ratio else "-"
            cells.append(text + (" busy" if ratio and ratio["busy"] else ""))
        if "TTFT ms" in columns:
            g = r["generation"]
            cells += [f"{g['ttft_ms']:.1f}", f"{g['decode_tokens_per_s']:.1f}"] if g else ["-", "-"]
        table.add_row(*cells)
    console.print(table)
