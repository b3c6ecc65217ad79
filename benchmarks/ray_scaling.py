"""How a 1,000-cell matrix would scale on a Ray cluster of 1, 4, 16 (and 64) nodes: a model on paper, from cell times
measured here.

Step 1 measures: a real run of the SST-2 classifier (2 methods, ONNX Runtime and OpenVINO) gives the time of each kind
of cell (export, quantize, quality, benchmark) from the `elapsed_s` its cell records. Or `--cells RUN/cells` reuses
a run's records.

Step 2 simulates the matrix: 10 models x (2 exports + 8 methods) x 4 machine types, 980 cells, with the placement
rules of qdeploy's Ray executor (executors/ray_cluster.py), event by event:
- export and quantize cells: 1 CPU on any node; a quantize cell after its model's export;
- quality cells: 1 CPU on a node of their machine type, after their artifact, the variants' after the baseline's;
- benchmark cells: one process per (model, machine type) holding a whole node of that type, cells in order;
- a model's run measures once its build stage is over (the executor runs stage after stage).
Nodes have 2 CPUs and are split evenly between machine types (1 node: one node offering every type's resource, like
the tests' local instance). No scheduler overhead or transfer time is modelled; Ray adds about 1 ms per task.

Run: .venv/bin/python benchmarks/ray_scaling.py [--cells RUN/cells] [--models 10 --methods 8 --machine-types 4]
"""
from __future__ import annotations

import argparse
import heapq
import json
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def measure_cells() -> Path:
    from qdeploy import pipeline, plan as plans

    out = Path(tempfile.mkdtemp(prefix="qdeploy-scaling-")) / "run"
    plan = plans.from_dict({"model": str(SHARED / "models" / "minilm-l6-sst2"), "task": "text-classification",
                            "methods": ["ort-static", "nncf-ptq"], "runtimes": ["torch", "ort-cpu", "openvino-cpu"],
                            "batch_sizes": [1, 8], "seq_len": 128,
                            "eval": {"accuracy": str(SHARED / "data" / "sst2" / "dev.tsv")}})
    pipeline.run(plan, out=out)
    return out / "cells"


def cell_times(cells: Path) -> dict[str, float]:
    times: dict[str, list[float]] = defaultdict(list)
    for path in cells.glob("*.json"):
        record = json.loads(path.read_text())
        kind, name = path.stem.split("-", 1)
        if "elapsed_s" not in record:
            continue
        if kind == "build":
            kind = "export" if name.endswith("-fp32") else "quantize"
        times[kind].append(record["elapsed_s"])
    missing = {"export", "quantize", "quality", "bench"} - set(times)
    if missing:
        raise SystemExit(f"{cells} has no timed {', '.join(sorted(missing))} cells (made before cells were timed?)")
    return {kind: statistics.mean(values) for kind, values in times.items()}


@dataclass
class Job:
    key: str
    kind: str  # build | quality | bench
    seconds: float
    machine: str | None = None
    needs: list[str] = field(default_factory=list)
    actor: str | None = None  # bench: the (model, machine type) process that runs it, in order


def matrix(models: int, methods: int, machine_types: int, t: dict[str, float]) -> list[Job]:
    jobs = []
    for m in range(models):
        exports = [f"m{m}/export{f}" for f in range(2)]
        jobs += [Job(e, "build", t["export"]) for e in exports]
        quantized = [f"m{m}/q{q}" for q in range(methods)]
        jobs += [Job(q, "build", t["quantize"], needs=[exports[i % 2]]) for i, q in enumerate(quantized)]
        built = exports + quantized  # a run measures once its build stage is over
        for k in range(machine_types):
            machine = f"type{k}"
            base = f"m{m}/quality/base/{machine}"
            jobs.append(Job(base, "quality", t["quality"], machine, built))
            for v in built:
                jobs.append(Job(f"m{m}/quality/{v}/{machine}", "quality", t["quality"], machine, built + [base]))
            actor = f"m{m}/{machine}"
            for v in ["base"] + built:
                jobs.append(Job(f"m{m}/bench/{v}/{machine}", "bench", t["bench"], machine, built, actor))
    return jobs


def simulate(jobs: list[Job], nodes: int, machine_types: int, cpus: int = 2) -> float:
    # node -> machine types it offers
    offers = [set(f"type{k}" for k in range(machine_types))] if nodes == 1 else \
        [{f"type{i % machine_types}"} for i in range(nodes)]
    free = [cpus] * len(offers)
    held: dict[int, str] = {}  # node -> bench actor holding it
    actor_node: dict[str, int] = {}
    actor_queue: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.kind == "bench":
            actor_queue[job.actor].append(job)
    done: set[str] = set()
    waiting = [j for j in jobs if j.kind != "bench"]
    busy_actor: set[str] = set()
    clock, events = 0.0, []  # (end time, seq, job key, node, cpus, actor)
    seq = 0
    while waiting or any(actor_queue.values()) or events:
        progressed = True
        while progressed:
            progressed = False
            # bench actors: one whole free node of their type, then their cells in order
            for actor, queue in actor_queue.items():
                if not queue or actor in busy_actor:
                    continue
                node = actor_node.get(actor)
                if node is None and not all(n in done for n in queue[0].needs):
                    continue  # Ray creates the actor when the run reaches its measure stage
                if node is None:
                    machine = queue[0].machine
                    candidates = [i for i in range(len(offers)) if machine in offers[i] and i not in held
                                  and free[i] == cpus]
                    if not candidates:
                        continue
                    node = candidates[0]
                    actor_node[actor], held[node], free[node] = node, actor, 0
                job = queue[0]
                if all(n in done for n in job.needs):  # always true once the actor holds its node
                    queue.pop(0)
                    busy_actor.add(actor)
                    heapq.heappush(events, (clock + job.seconds, seq, job.key, node, 0, actor))
                    seq += 1
                    progressed = True
            for job in list(waiting):
                if not all(n in done for n in job.needs):
                    continue
                nodes_ok = [i for i in range(len(offers)) if free[i] >= 1 and i not in held
                            and (job.machine is None or job.machine in offers[i])]
                if nodes_ok:
                    node = nodes_ok[0]
                    free[node] -= 1
                    waiting.remove(job)
                    heapq.heappush(events, (clock + job.seconds, seq, job.key, node, 1, None))
                    seq += 1
                    progressed = True
        if not events:
            raise RuntimeError("deadlock in the simulation: jobs left that nothing can run")
        clock, _, key, node, used, actor = heapq.heappop(events)
        done.add(key)
        free[node] += used
        if actor:
            busy_actor.discard(actor)
            if not actor_queue[actor]:  # the actor's last cell: the node is free again
                del held[node]
                free[node] = cpus
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=Path, help="a run's cells/ directory to take the cell times from")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--methods", type=int, default=8)
    parser.add_argument("--machine-types", type=int, default=4)
    parser.add_argument("--nodes", default="1,4,16,64")
    args = parser.parse_args()
    times = cell_times(args.cells or measure_cells())
    jobs = matrix(args.models, args.methods, args.machine_types, times)
    print("measured mean cell times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(times.items())))
    print(f"matrix: {args.models} models x (2 exports + {args.methods} methods) x {args.machine_types} machine types "
          f"= {len(jobs)} cells; 2 CPUs per node")
    serial = sum(j.seconds for j in jobs)
    print(f"{'nodes':>5} {'wall time':>10} {'speed-up vs 1 node':>19} {'efficiency':>10}")
    first = None
    for n in [int(x) for x in args.nodes.split(",")]:
        wall = simulate(jobs, n, args.machine_types)
        first = first or wall
        print(f"{n:>5} {wall / 60:>8.1f} m {first / wall:>18.1f}x {first / wall / n:>9.0%}")
    bench_per_actor = (args.methods + 3) * times["bench"]
    print(f"(one process: {serial / 3600:.1f} h of cell time; the floor is one model's benchmark on one node, "
          f"{bench_per_actor / 60:.1f} m, reached at {args.models * args.machine_types} nodes, one per model and "
          "machine type)")


if __name__ == "__main__":
    main()
