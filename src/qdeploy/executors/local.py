"""Every cell in this process, one after another, in the order given (the default executor)."""
from __future__ import annotations

from typing import Any

from ..benchmarking.memory import release_memory
from ..machine import gpus
from ..plan import MachineSpec, Plan
from ..progress import Progress
from . import EXECUTORS, Cell, Done, Tally


@EXECUTORS.register("local")
class LocalExecutor:
    name = "local"

    def __init__(self, plan: Plan):
        self.plan = plan

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def unavailable(self, machine: MachineSpec) -> str | None:
        # Custom resources name machine types of a cluster; run locally, every type's cells run here, and the
        # report's machine description says what this machine is.
        found = len(gpus())
        if machine.gpus > found:
            return f"machine type {machine.name} needs {machine.gpus} GPU(s); this machine has {found}"
        return None

    def cpus(self, machine: MachineSpec) -> int | None:
        return None

    def run(self, cells: list[Cell], done: Done, progress: Progress) -> None:
        results: dict[str, dict[str, Any]] = {}
        tally = Tally(len(cells))
        for cell in cells:
            tally.running = 1
            progress.log(tally.note(f"{cell.key} …"))
            args = cell.args + ((results.get(cell.needs) or {},) if cell.needs else ())
            result = cell.fn(*args)
            results[cell.key] = result
            done(cell, result)
            release_memory()  # what the cell let go, before the next one loads its sessions
            tally.finish(cell, result, progress)

