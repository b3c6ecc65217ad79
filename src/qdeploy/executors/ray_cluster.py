"""Cells as Ray tasks: qdeploy schedules nothing itself; Ray places, retries and restarts.

- build cells (export, quantize): one CPU and a memory estimate, on any node; retried when their worker is lost.
- quality cells: one CPU and a sliver of their machine type's resource, so they share nodes of that type.
- bench cells: one actor per machine type holding all of a node's CPUs (and its GPUs) and its whole machine-type
  resource, so nothing else runs beside a measurement; the actor runs its cells in order, the fp32 baseline first, so
  baseline and variants are timed by one process. A lost actor is restarted on a node of the same type and the cell it
  was running is retried there; cells it had finished are not run again.
A cell whose retries run out is reported as not run, with the reason; an exception inside a cell is a bug and stops the
run, as it would locally (finished cells are kept for --resume).
"""
from __future__ import annotations

import socket
from typing import Any, Callable

from ..errors import InputError, UnsupportedError
from ..plan import MachineSpec, Plan
from ..progress import Progress
from . import EXECUTORS, Cell, Done, Tally

# Faults of the cluster, not of the cell: the cell is retried (by Ray) and, when that runs out, reported as not run.
_LOST = ("WorkerCrashedError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "ObjectLostError",
         "OwnerDiedError", "LocalRayletDiedError", "OutOfMemoryError", "TaskUnschedulableError",
         "ActorUnschedulableError")
_SLIVER = 0.001  # of a machine-type resource: quality cells stay on nodes of their type without excluding others


def _call(fn: Callable[..., dict[str, Any]], args: tuple) -> dict[str, Any]:
    return fn(*args)


class _BenchWorker:
    def call(self, fn: Callable[..., dict[str, Any]], args: tuple) -> dict[str, Any]:
        return fn(*args)


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Ray waits minutes on an address nothing listens at; a plain connection says so in seconds."""
    if not address or address == "auto":
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"Ray address {address!r} must look like HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise InputError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                         "`ray start --head` there, or drop --address to start a local instance") from None


def _ray():
    try:
        import ray
    except ImportError:
        raise UnsupportedError("the ray executor needs Ray: pip install 'qdeploy[ray]'") from None
    return ray


@EXECUTORS.register("ray")
class RayExecutor:
    name = "ray"

    def __init__(self, plan: Plan):
        self.plan = plan
        self._ray = _ray()
        self._started = False
        self._nodes: list[dict[str, float]] = []

    def __enter__(self) -> "RayExecutor":
        ray = self._ray
        if not ray.is_initialized():
            _check_reachable(self.plan.address)
            options = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
            try:
                # No address: a local instance on this machine (its CPUs, no custom resources).
                ray.init(address=self.plan.address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.plan.address or "a local instance"
                raise InputError(f"cannot start or join the Ray cluster ({where}): "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                 ) from None
            self._started = True
        self._nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self._ray.shutdown()

    def _matching(self, machine: MachineSpec) -> list[dict[str, float]]:
        return [n for n in self._nodes
                if all(n.get(k, 0) >= v for k, v in machine.resources.items()) and n.get("GPU", 0) >= machine.gpus]

    def unavailable(self, machine: MachineSpec) -> str | None:
        if self._matching(machine):
            return None
        wanted = {**machine.resources, **({"GPU": machine.gpus} if machine.gpus else {})}
        offered = sorted({k for n in self._nodes for k in n if not k.startswith(("node:", "object_store", "memory"))})
        return (f"no node of the Ray cluster has what machine type {machine.name} needs ({wanted}); its nodes offer "
                f"{', '.join(offered) or 'nothing'}")

    def cpus(self, machine: MachineSpec) -> int | None:
        nodes = self._matching(machine)
        return max(1, int(min(n.get("CPU", 1) for n in nodes))) if nodes else None

    def _task_options(self, cell: Cell) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": self.plan.retries}
        if cell.memory_mb:
            options["memory"] = cell.memory_mb * 2**20
        machine = cell.machine
        if cell.kind == "quality" and machine is not None:
            options["resources"] = {k: _SLIVER for k in machine.resources}
            if machine.gpus:
                options["num_gpus"] = _SLIVER
        return options

    def _bench_actor(self, machine: MachineSpec):
        options: dict[str, Any] = {"num_cpus": self.cpus(machine) or 1, "max_restarts": self.plan.retries,
                                   "max_task_retries": self.plan.retries}
        if machine.resources:
            options["resources"] = dict(machine.resources)
        if machine.gpus:
            options["num_gpus"] = machine.gpus
        return self._ray.remote(_BenchWorker).options(**options).remote()

    def run(self, cells: list[Cell], done: Done, progress: Progress) -> None:
        ray = self._ray
        lost = tuple(getattr(ray.exceptions, name) for name in _LOST if hasattr(ray.exceptions, name))
        call = ray.remote(_call)
        pending: dict[Any, Cell] = {}
        waiting = [c for c in cells if c.needs]
        actors: dict[str, Any] = {}
        bench_left: dict[str, int] = {}
        for cell in cells:
            if cell.kind == "bench":
                bench_left[cell.machine.name] = bench_left.get(cell.machine.name, 0) + 1
        tally = Tally(len(cells))

        def submit(cell: Cell, extra: tuple = ()) -> None:
            if cell.kind == "bench":
                name = cell.machine.name
                if name not in actors:
                    actors[name] = self._bench_actor(cell.machine)
                ref = actors[name].call.remote(cell.fn, cell.args + extra)
            else:
                ref = call.options(**self._task_options(cell)).remote(cell.fn, cell.args + extra)
            pending[ref] = cell

        for cell in cells:
            if not cell.needs:
                submit(cell)
        try:
            while pending:
                tally.running = len(pending)
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except lost as exc:
                    result = {"skipped": f"not run: its worker or node was lost and {self.plan.retries} retries "
                                         f"did not finish it ({type(exc).__name__})", "session": None}
                except ray.exceptions.RayTaskError as exc:
                    raise exc.as_instanceof_cause() from None
                done(cell, result)
                tally.finish(cell, result, progress)
                for follower in [c for c in waiting if c.needs == cell.key]:
                    waiting.remove(follower)
                    submit(follower, (result,))
                if cell.kind == "bench":
                    bench_left[cell.machine.name] -= 1
                    if bench_left[cell.machine.name] == 0:  # frees the node for the next machine type's cells
                        ray.kill(actors.pop(cell.machine.name))
        finally:
            for ref, cell in pending.items():  # a stopped run leaves nothing running on the cluster
                if cell.kind != "bench":  # actor calls cannot be force-cancelled; killing the actor ends them
                    ray.cancel(ref, force=True)
            for actor in actors.values():
                ray.kill(actor)


def map_on_this_node(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """`fn` over `items` as Ray tasks on the node this runs on (the items' files are local to it), one CPU each."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(fn).options(num_cpus=1, scheduling_strategy=here)
    return ray.get([task.remote(item) for item in items])
