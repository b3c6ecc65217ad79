"""The cells of one run, stage by stage (build, then measure), handed to the executor; cells finished by an earlier,
interrupted process come from the store instead of being run again."""
from __future__ import annotations

from typing import Any

from .. import runtimes
from ..artifact import kind_of
from ..baseline import BASELINE, FP32_VARIANTS
from ..errors import BusyMachineError
from ..executors import Cell, CellKey
from ..machine import describe
from ..plan import MachineSpec
from ..progress import Progress
from ..report.model import Quality, Row
from ..work import RunContext, bench_cell, export_cell, quality_cell, quantize_cell, speed_cell
from .check import Checked
from .store import CellStore


class Stages:
    """The cells of one run, stage by stage, handed to the executor; finished cells come from the store."""

    def __init__(self, checked: Checked, work: RunContext, store: CellStore, executor, progress: Progress):
        self.checked, self.work, self.store, self.executor, self.progress = checked, work, store, executor, progress
        self.plan = checked.plan
        self.skipped: list[dict[str, Any]] = [{"variant": "(all)", "runtime": r, "reason": reason}
                                              for r, reason in checked.unavailable.items()]
        self.usable = [r for r in checked.runtimes if r not in checked.unavailable]

    def _run(self, stage: str, cells: list[Cell]) -> dict[CellKey, dict[str, Any]]:
        """Run the cells not finished before; the results of all of them, by key."""
        results: dict[CellKey, dict[str, Any]] = {}
        todo = []
        for cell in cells:
            record = self.store.get(cell.key.kind, cell.key.name)
            if record is None or "skipped" in record:  # a failed cell is tried again on --resume
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
            for metric, array in (result.get("references") or {}).items():
                self.store.put_array("reference", f"{metric}@{cell.key.machine}", array)
            self.store.put(cell.key.kind, cell.key.name, {k: v for k, v in result.items() if k != "references"})
            results[cell.key] = result

        self.executor.run(todo, done, self.progress)
        return {cell.key: results[cell.key] for cell in cells}  # in plan order, whatever order they finished in

    def _references(self, cell: Cell) -> dict[str, Any]:
        if cell.key.kind != "quality" or not cell.key.machine:
            return {}
        arrays = {m: self.store.get_array("reference", f"{m}@{cell.key.machine}") for m in self.work.metrics}
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
        exports = self._run("export", [Cell(CellKey("build", FP32_VARIANTS[fmt]), "build", export_cell, (work, fmt),
                                            memory_mb=memory_mb) for fmt in sorted(wanted)])
        quantized = self._run("quantize", [Cell(CellKey("build", variant), "build", quantize_cell,
                                                (work, variant, name, config, fmt), memory_mb=memory_mb)
                                           for variant, name, config, fmt in checked.method_configs])
        variants = []
        for key, result in [*exports.items(), *quantized.items()]:
            if "skipped" in result:
                self.skipped.append({"variant": key.variant, "runtime": "(all)", "reason": result["skipped"]})
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
            kind = kind_of(self.plan.task)  # the engines run language models only
            pairs = [(name, r) for name, fmt in [(BASELINE, "pytorch")] + [(v["name"], v["format"]) for v in variants]
                     for r in self.usable if runtimes.runs(r, fmt, kind)]
            base = CellKey("quality", BASELINE, "torch", machine.name)
            for name, runtime in pairs:
                needs = base if name != BASELINE and (BASELINE, "torch") in pairs else None
                cells.append(Cell(CellKey("quality", name, runtime, machine.name), "quality", quality_cell,
                                  (self.work, name, runtime, cpus), machine, needs))
            cells += [Cell(CellKey("bench", name, runtime, machine.name), "bench", bench_cell,
                           (self.work, name, runtime, cpus), machine) for name, runtime in pairs]
            # Last on its machine: every session is loaded again and timed in alternating rounds.
            cells.append(Cell(CellKey("speed", machine=machine.name), "bench", speed_cell, (self.work, pairs, cpus),
                              machine))
        results = self._run("measure", cells)
        speeds = {cell.key.machine: results[cell.key] for cell in cells if cell.key.kind == "speed"}
        self._check_strict(speeds)
        rows: list[Row] = []
        described: dict[str, Any] = {}
        threads: dict[str, Any] = {}
        for cell in cells:
            if cell.key.kind != "bench":
                continue
            machine, name, runtime = cell.key.machine, cell.key.variant, cell.key.runtime
            bench = results[cell.key]
            quality = results.get(CellKey("quality", name, runtime, machine), {})
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
                rows.append(Row(**row, machine=machine, qualities=[Quality(**q) for q in quality.get("qualities", [])],
                                items=quality.get("items") or {}, session=bench["session"], speed=own or None,
                                speed_reference=speed.get("reference"), speed_session=speed.get("session"),
                                busy_reasons=list(own.get("busy") or []), load=timed.get("load")))
            if speed.get("not_timed", {}).get(f"{name}@{runtime}"):
                self.skipped.append({"variant": name, "runtime": runtime, "machine": machine,
                                     "reason": "not in the interleaved timing: "
                                               f"{speed['not_timed'][f'{name}@{runtime}']}"})
        self.thread_choices = {m: s["threads_choice"] for m, s in speeds.items() if s.get("threads_choice")}
        if not described:
            described = ({m.name: describe() for m in machines if not self.executor.unavailable(m)}
                         or {"local": describe()})
        return rows, described, threads
