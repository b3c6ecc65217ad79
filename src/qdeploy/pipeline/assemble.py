"""The report of a run, assembled from its cells' results: rows related to their fp32 baselines, the machine, the
settings that say how each number was measured, and the recommendation; one report per machine type when several."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__, evaluation
from ..baseline import BASELINE, relate, tolerance_for
from ..benchmarking import TIMINGS, LatencyScenario
from ..config import to_dict
from ..machine import describe
from ..tasks import task as get_task
from ..report import write_reports
from ..report.model import REPORT_SCHEMA, Report, Row
from ..report.recommend import recommend
from .check import Checked
from ..layer_plan import mark_differences
from .stages import Stages


def write(out: Path, checked: Checked, stages: Stages, variants: list[dict[str, Any]], rows: list[Row],
          machines: dict[str, Any], threads: dict[str, Any]) -> Path:
    plan, source = checked.plan, checked.source
    rows = relate(rows, {m: tolerance_for(m, plan) for m in checked.metrics})
    default_storage = plan.storage is None
    mark_differences(variants)
    for record in variants:
        record["path"] = f"artifacts/{record['name']}" if default_storage else f"{plan.storage}/{record['name']}"
    single = len(machines) == 1
    report = Report(
        schema=REPORT_SCHEMA,
        version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=next(iter(machines.values())) if single else describe(),
        machines=machines,
        model={"source": source.spec, "path": str(source.path), "task": plan.task, "sha256": source.sha256,
               "model_type": source.model_type},
        plan=plan.to_dict(),
        settings={"threads": next(iter(threads.values()), None) if single else threads,
                  **to_dict(LatencyScenario(warmup=plan.warmup, min_reps=plan.min_reps,
                                            min_time_s=plan.min_time_s)),
                  "throughput_streams": plan.throughput_streams,
                  "speed-up": f"median of per-round ratios over {plan.rounds} interleaved rounds (the reference, "
                              "each variant and its runtime's fp32 timed alternately in one process), with the "
                              "distribution-free 95 % interval of the median"
                              + (f"; each round times decoding ({plan.new_tokens - 1} greedy tokens after the first, "
                                 "through each runtime's generation loop)" if get_task(plan.task).generative else
                                 "; each round times model-only calls"),
                  "threads_choice": (next(iter(stages.thread_choices.values()), None) if single
                                     else stages.thread_choices),
                  "tolerance": {m: tolerance_for(m, plan).describe() for m in checked.metrics},
                  "measured": {t: TIMINGS.get(t).what for t in plan.timing},
                  "baseline": f"{BASELINE} on torch, same inputs, same machine type; speed-ups from the one "
                              "process that timed the interleaved rounds, latencies from each variant's own cell",
                  "executor": plan.executor, "storage": plan.storage or "artifacts",
                  "sessions": sorted({r.session for r in rows})},
        metrics={m: evaluation.metric(m).description for m in checked.metrics},
        variants=variants,
        skipped=stages.skipped,
        results=rows,
    )
    report = replace(report, recommendation=recommend(report).to_dict())
    if plan.machines:
        _write_machine_reports(out, report)
    return write_reports(out, report)


def _write_machine_reports(out: Path, report: Report) -> None:
    """One ordinary report per machine type, and the cross-machine comparison of them (compare.*) beside report.*."""
    from ..report.compare import build_comparison, write_comparison

    names = list(report.machines)
    per_machine = []
    for name in names:
        threads = report.settings["threads"]
        one = replace(report, machine=report.machines[name], machines={name: report.machines[name]},
                      settings={**report.settings,
                                "threads": threads.get(name) if isinstance(threads, dict) else threads},
                      results=[r for r in report.results if r.machine == name],
                      skipped=[s for s in report.skipped if s.get("machine") in (name, None)])
        one = replace(one, recommendation=recommend(one).to_dict())
        write_reports(out / "machines" / name, one)
        per_machine.append(one)
    if len(per_machine) > 1:
        write_comparison(build_comparison(per_machine, names, [f"machines/{n}" for n in names], labels=names), out)
