"""Runs a plan: export -> quantize -> (quality, latency) per machine type x variant x runtime -> report.

The work is a list of cells (work.py) that an executor runs: in this process, or on a Ray cluster. Each machine
type's PyTorch fp32 baseline is timed first by the same process that times its variants, so every speed-up is a ratio
to a baseline measured in the same run on the same machine. Bad input is checked before the long work starts.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, evaluation, executors, models, quantization, runtimes
from .artifact import Artifact
from .baseline import BASELINE, FP32_VARIANTS, relate, tolerance_for
from .benchmarking import TIMINGS, LatencyScenario, load
from .calibration import CalibrationSource
from .cells import PLAN_FILE, CellStore, remove_stale_staging
from .config import to_dict
from .errors import BusyMachineError, ConfigError, UnsupportedError
from .executors import Cell
from .machine import describe
from .plan import MachineSpec, Plan
from .progress import Progress, Silent
from .report import write_reports
from .report.recommend import recommend
from .storage import Storage
from .tasks import architecture, check_task, resolve_task
from .tasks import task as get_task
from .work import RunContext, bench_cell, export_cell, quality_cell, quantize_cell, speed_cell

AUTO = "auto"  # every registered runtime; those missing here are listed as not run
CURRENT_OUT: Path | None = None  # the directory of the run under way in this process


@dataclass
class Checked:
    """A plan whose names, options and files have all been checked."""
    plan: Plan
    source: models.ModelSource
    method_configs: list[tuple[str, str, Any, str]]  # (variant, method, config, the parent's format)
    metrics: list[str]
    runtimes: list[str]
    unavailable: dict[str, str]
    calibration: CalibrationSource
    task_reason: str  # why this task: inferred from config.json, or as asked


def check(plan: Plan) -> Checked:
    source = models.resolve(plan.model, allow_pickle=plan.allow_pickle)
    task_name, task_reason = resolve_task(plan.task, source.config(), plan.drop_head)
    plan = replace(plan, task=task_name)
    the_task = get_task(plan.task)
    method_configs = []
    for spec in plan.methods:
        fmt = spec.format or quantization.method(spec.name).input_format
        method_configs.append((spec.variant, spec.name, quantization.make_config(spec.name, spec.options, fmt), fmt))
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
    unknown = sorted(set(plan.tolerance) - set(metrics))
    if unknown:
        raise ConfigError(f"tolerance names {', '.join(unknown)}, which this run does not measure; it measures "
                          f"{', '.join(metrics)}")
    if not plan.batch_sizes or min(plan.batch_sizes) < 1 or plan.seq_len < 2:
        raise ConfigError("batch sizes must be >= 1 and the sequence length >= 2")
    if "model" not in plan.timing:
        # Speed-ups, comparisons and throughput are all built on the model-only timing; end-to-end comes beside it.
        raise ConfigError("timing must include model (e.g. model,end-to-end); got "
                          f"{','.join(plan.timing) or 'nothing'}")
    unavailable = {r: reason for r in wanted_runtimes if (reason := runtimes.get(r).unavailable_reason())}
    if plan.executor != "local" and not auto:
        # Named runtimes are tried on the cluster's nodes, which may have what this one lacks (a GPU, a provider);
        # where a node lacks one, that cell is reported as not run with the node's reason.
        unavailable = {}
    if unavailable and not auto:
        # Asked for by name: an error. Under `auto`, runtimes missing here are reported as not run.
        available = [r for r in runtimes.names() if runtimes.get(r).unavailable_reason() is None]
        name, reason = next(iter(unavailable.items()))
        raise UnsupportedError(f"runtime {name} is not available: {reason}; available here: {', '.join(available)}")
    check_task(architecture(source.model_type), plan.task)
    cal = plan.calibration
    calibration = CalibrationSource(cal.source, cal.samples, cal.seed, cal.max_length, cal.batch_size)
    if any(quantization.method(name).needs_calibration for _, name, _, _ in method_configs):
        calibration.texts()  # fail now, not after the exports, on a missing or empty calibration file
    return Checked(plan, source, method_configs, metrics, wanted_runtimes, unavailable, calibration, task_reason)


def default_out(source: models.ModelSource) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{source.name}-{stamp}"


def _max_positions(source: models.ModelSource) -> int | None:
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
    plan, source = checked.plan, checked.source  # the plan with its task resolved
    max_positions = _max_positions(source)
    if max_positions and plan.seq_len > max_positions:
        raise ConfigError(f"--seq-len {plan.seq_len} is beyond what {source.name} allows ({max_positions} positions)")
    executor = executors.make(plan)  # a missing Ray fails here, before the run directory exists
    if plan.strict_timing and plan.executor == "local":
        busy = load.judge(load.probe())
        if busy:  # before the long work; the measurement itself is checked again when it is taken
            raise BusyMachineError(f"the machine is busy ({'; '.join(busy.reasons)}) and --strict-timing is set; "
                                   "run when it is idle")
    out = prepare_out(plan, source, out, resume)
    global CURRENT_OUT
    CURRENT_OUT = out  # the CLI names it in the resume hint when the run is interrupted
    default_storage = plan.storage is None
    storage = Storage(out / "artifacts" if default_storage else plan.storage)
    if not storage.remote:
        for name in remove_stale_staging(Path(storage.root)):
            progress.log(f"removed unfinished {name} left by an interrupted run")
    store = CellStore(out)
    with executor:
        if checked.task_reason != "as asked":  # said once the run is under way, so an error stays one line
            progress.log(f"task {plan.task} ({checked.task_reason})")
        work = RunContext(key=f"{out.resolve()}#{uuid.uuid4().hex[:8]}", plan=plan, source=source, storage=storage,
                          metrics=tuple(checked.metrics), max_positions=max_positions,
                          parallel=executor.name != "local")
        stages = _Stages(checked, work, store, executor, progress)
        variants = stages.build()
        rows, machines, threads = stages.measure(variants)
    relate(rows, {m: tolerance_for(m, plan) for m in checked.metrics})
    for record in variants:
        record["path"] = f"artifacts/{record['name']}" if default_storage else f"{plan.storage}/{record['name']}"
    single = len(machines) == 1
    report = {
        "schema": "qdeploy.report/1",
        "qdeploy_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": next(iter(machines.values())) if single else describe(),
        "machines": machines,
        "model": {"source": source.spec, "path": str(source.path), "task": plan.task, "sha256": source.sha256,
                  "model_type": source.model_type},
        "plan": plan.to_dict(),
        "settings": {"threads": next(iter(threads.values()), None) if single else threads,
                     **to_dict(LatencyScenario(warmup=plan.warmup, min_reps=plan.min_reps,
                                               min_time_s=plan.min_time_s)),
                     "throughput_streams": plan.throughput_streams,
                     "speed-up": f"median of per-round ratios over {plan.rounds} interleaved rounds (the reference, "
                                 "each variant and its runtime's fp32 timed alternately in one process), with the "
                                 "distribution-free 95 % interval of the median",
                     "threads_choice": (next(iter(stages.thread_choices.values()), None) if single
                                        else stages.thread_choices),
                     "tolerance": {m: tolerance_for(m, plan).describe() for m in checked.metrics},
                     "measured": {t: TIMINGS.get(t).what for t in plan.timing},
                     "baseline": f"{BASELINE} on torch, same inputs, same machine type; speed-ups from the one "
                                 "process that timed the interleaved rounds, latencies from each variant's own cell",
                     "executor": plan.executor, "storage": storage.root if not default_storage else "artifacts",
                     "sessions": sorted({r["session"] for r in rows})},
        "metrics": {m: evaluation.metric(m).description for m in checked.metrics},
        "variants": variants,
        "skipped": stages.skipped,
        "results": rows,
    }
    report["recommendation"] = recommend(report).to_dict()
    if plan.machines:
        _write_machine_reports(out, report)
    return write_reports(out, report)


def _write_machine_reports(out: Path, report: dict[str, Any]) -> None:
    """One ordinary report per machine type, and the cross-machine comparison of them (compare.*) beside report.*."""
    from .report.compare import build_comparison, write_comparison

    names = list(report["machines"])
    per_machine = []
    for name in names:
        threads = report["settings"]["threads"]
        one = {**report, "machine": report["machines"][name], "machines": {name: report["machines"][name]},
               "settings": {**report["settings"], "threads": threads.get(name) if isinstance(threads, dict) else threads},
               "results": [r for r in report["results"] if r.get("machine") == name],
               "skipped": [s for s in report["skipped"] if s.get("machine") in (name, None)]}
        one["recommendation"] = recommend(one).to_dict()
        write_reports(out / "machines" / name, one)
        per_machine.append(one)
    if len(per_machine) > 1:
        write_comparison(build_comparison(per_machine, names, [f"machines/{n}" for n in names], labels=names), out)


class _Stages:
    """The cells of one run, stage by stage, handed to the executor; finished cells come from the store."""

    def __init__(self, checked: Checked, work: RunContext, store: CellStore, executor, progress: Progress):
        self.checked, self.work, self.store, self.executor, self.progress = checked, work, store, executor, progress
        self.plan = checked.plan
        self.skipped: list[dict[str, Any]] = [{"variant": "(all)", "runtime": r, "reason": reason}
                                              for r, reason in checked.unavailable.items()]
        self.usable = [r for r in checked.runtimes if r not in checked.unavailable]

    def _run(self, stage: str, cells: list[Cell]) -> dict[str, dict[str, Any]]:
        """Run the cells not finished before; the results of all of them, by key."""
        results: dict[str, dict[str, Any]] = {}
        todo = []
        for cell in cells:
            kind, name = cell.key.split(":", 1)
            record = self.store.get(kind, name)
            if record is None:
                todo.append(cell)
            else:
                results[cell.key] = {**record, "references": self._references(cell)}
        for cell in todo:  # a cell needing one finished earlier gets its result now
            if cell.needs in results:
                cell.args, cell.needs = cell.args + (results[cell.needs],), None
        self.progress.stage(stage, len(cells))
        for _ in range(len(cells) - len(todo)):
            self.progress.advance("finished earlier")

        def done(cell: Cell, result: dict[str, Any]) -> None:
            kind, name = cell.key.split(":", 1)
            for metric, array in (result.get("references") or {}).items():
                self.store.put_array("reference", f"{metric}@{cell.machine.name if cell.machine else ''}", array)
            self.store.put(kind, name, {k: v for k, v in result.items() if k != "references"})
            results[cell.key] = result

        self.executor.run(todo, done, self.progress)
        return {cell.key: results[cell.key] for cell in cells}  # in plan order, whatever order they finished in

    def _references(self, cell: Cell) -> dict[str, Any]:
        if cell.kind != "quality" or cell.machine is None:
            return {}
        arrays = {m: self.store.get_array("reference", f"{m}@{cell.machine.name}") for m in self.work.metrics}
        return {m: a for m, a in arrays.items() if a is not None}

    def _check_strict(self, speeds: dict[str, dict[str, Any]]) -> None:
        """--strict-timing: a busy measurement is an error; its cell is forgotten so that --resume times it again."""
        if not self.plan.strict_timing:
            return
        for machine, speed in speeds.items():
            for batch, timed in (speed.get("batches") or {}).items():
                reasons = list(dict.fromkeys(r for row in (timed.get("rows") or {}).values() for r in row["busy"]))
                if reasons:
                    self.store.drop("speed", machine)
                    raise BusyMachineError(f"the machine was busy while timing batch {batch} on {machine} "
                                           f"({'; '.join(reasons)}); everything else is kept: run again with "
                                           f"--resume {self.store.root.parent} when it is idle")

    def build(self) -> list[dict[str, Any]]:
        checked, work = self.checked, self.work
        wanted = {fmt for _, _, _, fmt in checked.method_configs}
        wanted |= {fmt for r in self.usable for fmt in runtimes.get(r).formats if fmt in FP32_VARIANTS}
        # Export and quantization hold the model a few times over (PyTorch, the graph, its optimized copies).
        weights = sum(f.stat().st_size for f in work.source.path.glob("*.safetensors")) or 2**28
        memory_mb = 1024 + 6 * weights // 2**20
        exports = self._run("export", [Cell(f"build:{FP32_VARIANTS[fmt]}", "build", export_cell, (work, fmt),
                                            memory_mb=memory_mb) for fmt in sorted(wanted)])
        quantized = self._run("quantize", [Cell(f"build:{variant}", "build", quantize_cell,
                                                (work, variant, name, config, fmt), memory_mb=memory_mb)
                                           for variant, name, config, fmt in checked.method_configs])
        variants = []
        for key, result in [*exports.items(), *quantized.items()]:
            if "skipped" in result:
                self.skipped.append({"variant": key.split(":", 1)[1], "runtime": "(all)", "reason": result["skipped"]})
                self.progress.log(f"skipped {key}: {result['skipped']}")
            else:
                variants.append(result["variant"])
        return variants

    def measure(self, variants: list[dict[str, Any]]):
        machines = list(self.plan.machines) or [MachineSpec("local")]
        cells: list[Cell] = []
        for machine in machines:
            reason = self.executor.unavailable(machine)
            if reason:
                self.skipped.append({"variant": "(all)", "runtime": "(all)", "machine": machine.name,
                                     "reason": f"not run: {reason}"})
                continue
            cpus = self.executor.cpus(machine)
            pairs = [(name, r) for name, fmt in [(BASELINE, "pytorch")] + [(v["name"], v["format"]) for v in variants]
                     for r in self.usable if fmt in runtimes.get(r).formats]
            base = f"quality:{BASELINE}@torch@{machine.name}"
            for name, runtime in pairs:
                key = f"quality:{name}@{runtime}@{machine.name}"
                needs = base if name != BASELINE and (BASELINE, "torch") in pairs else None
                cells.append(Cell(key, "quality", quality_cell, (self.work, name, runtime, cpus), machine, needs))
            cells += [Cell(f"bench:{name}@{runtime}@{machine.name}", "bench", bench_cell,
                           (self.work, name, runtime, cpus), machine) for name, runtime in pairs]
            # Last on its machine: every session is loaded again and timed in alternating rounds.
            cells.append(Cell(f"speed:{machine.name}", "bench", speed_cell, (self.work, pairs, cpus), machine))
        results = self._run("measure", cells)
        speeds = {cell.machine.name: results[cell.key] for cell in cells if cell.fn is speed_cell}
        self._check_strict(speeds)
        rows: list[dict[str, Any]] = []
        described: dict[str, Any] = {}
        threads: dict[str, Any] = {}
        for cell in cells:
            if cell.kind != "bench" or cell.fn is speed_cell:
                continue
            machine, (name, runtime) = cell.machine.name, cell.args[1:3]
            bench = results[cell.key]
            quality = results.get(f"quality:{name}@{runtime}@{machine}", {})
            for reason in (bench.get("skipped"), quality.get("skipped")):
                if reason:
                    self.skipped.append({"variant": name, "runtime": runtime, "machine": machine, "reason": reason})
            if "skipped" in bench:
                continue
            described.setdefault(machine, bench["machine"])
            threads.setdefault(machine, bench["threads"])
            speed = speeds.get(machine) or {}
            for row in bench["rows"]:
                timed = ((speed.get("batches") or {}).get(str(row["batch"])) or {})
                own = (timed.get("rows") or {}).get(f"{name}@{runtime}") or {}
                rows.append({**row, "machine": machine, "qualities": list(quality.get("qualities", [])),
                             "items": quality.get("items") or {}, "session": bench["session"], "speed": own or None,
                             "speed_reference": speed.get("reference"), "speed_session": speed.get("session"),
                             "busy_reasons": list(own.get("busy") or []), "load": timed.get("load")})
            if speed.get("not_timed", {}).get(f"{name}@{runtime}"):
                self.skipped.append({"variant": name, "runtime": runtime, "machine": machine,
                                     "reason": f"not in the interleaved timing: {speed['not_timed'][f'{name}@{runtime}']}"})
        self.thread_choices = {m: s["threads_choice"] for m, s in speeds.items() if s.get("threads_choice")}
        if not described:
            described = {m.name: describe() for m in machines if not self.executor.unavailable(m)} or {"local": describe()}
        return rows, described, threads
