"""Who runs a run's cells: this process (`local`, the default) or a Ray cluster (`ray`).

The pipeline describes the work as cells (plain functions of picklable arguments, see work.py) and hands them to an
executor; the executor only decides where and when each runs, retries what a lost worker dropped, and reports each
result once. Cells of kind `bench` for one machine type run in order in one process that holds a whole node, so that
the fp32 baseline and its variants are timed by the same process with no neighbour disturbing them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

from ..plan import MachineSpec, Plan
from ..progress import Progress
from ..registry import Registry

Done = Callable[["Cell", dict[str, Any]], None]
Kind = Literal["build", "quality", "bench", "speed"]


@dataclass(frozen=True)
class CellKey:
    """What a cell computes: a build (export or quantization) of a variant, a variant's quality or latency on a
    runtime and machine type, or a machine type's interleaved speed rounds. Written `kind:variant@runtime@machine`
    (parts that do not apply left out), which is also the cell's file name in the run's store."""
    kind: Kind
    variant: str = ""
    runtime: str = ""
    machine: str = ""

    @property
    def name(self) -> str:
        return "@".join(part for part in (self.variant, self.runtime, self.machine) if part)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass
class Cell:
    key: CellKey  # unique in the run
    kind: Literal["build", "quality", "bench"]
    fn: Callable[..., dict[str, Any]]
    args: tuple
    machine: MachineSpec | None = None
    needs: CellKey | None = None  # a cell whose result is passed as the last argument (quality: the baseline's)
    memory_mb: int = 0  # what the cell may hold at its peak: a cluster places it only where that much is free


class Executor(Protocol):
    name: str

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc) -> None: ...

    def unavailable(self, machine: MachineSpec) -> str | None:
        """Why no node here can run cells of this machine type, or None."""

    def cpus(self, machine: MachineSpec) -> int | None:
        """CPUs of one node of this type (a session's threads), or None for this machine's physical cores."""

    def run(self, cells: list[Cell], done: Done, progress: Progress) -> None:
        """Run every cell (a cell's `needs` before it), calling `done` once per cell as it finishes."""


EXECUTORS: Registry[Callable[[Plan], Executor]] = Registry("executor", ("qdeploy.executors.local",
                                                                        "qdeploy.executors.ray_cluster"))


def make(plan: Plan) -> Executor:
    return EXECUTORS.get(plan.executor)(plan)


class Tally:
    """Counts for the progress note: one bar per stage for the whole cluster."""

    def __init__(self, total: int):
        self.total, self.done, self.running, self.failed = total, 0, 0, 0

    def note(self, last: str) -> str:
        return f"{self.done}/{self.total} done · {self.running} running · {self.failed} failed · {last}"

    def finish(self, cell: Cell, result: dict[str, Any], progress: Progress) -> None:
        self.done += 1
        self.running = max(0, self.running - 1)
        if "skipped" in result:
            self.failed += 1
        progress.advance(self.note(str(cell.key)))
