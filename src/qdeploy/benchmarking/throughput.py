"""Throughput under concurrent requests, the way each runtime is meant to serve them.

A session that offers `throughput_runner(streams)` (OpenVINO: one compiled model with PERFORMANCE_HINT=THROUGHPUT and
an AsyncInferQueue) is fed through its own asynchronous queue. Otherwise there is one session per stream, each in its
own thread: ONNX Runtime and PyTorch release the GIL while they compute, so Python threads issue truly concurrent
requests; each stream's session gets cores // streams threads, as a serving process would.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class ThroughputScenario:
    streams: int = 2
    warmup: int = 2  # requests per stream before the clock starts
    min_requests: int = 20  # over all streams
    min_time_s: float = 2.0

    def __post_init__(self):
        if self.streams < 1 or self.min_requests < 1:
            raise ConfigError("throughput needs streams >= 1 and min_requests >= 1")


class AsyncRunner(Protocol):
    """A runtime's own queue of in-flight requests."""
    requests: int  # how many requests the queue keeps in flight
    settings: dict[str, Any]  # what the runtime chose (hint, streams, requests): recorded in the measurement

    def submit(self, inputs: dict[str, np.ndarray], done: Callable[[float], None] | None) -> None:
        """Start one request; blocks while every request is busy. `done(latency_ms)` runs when it completes."""

    def wait(self) -> None:
        """Return when every submitted request has completed."""


def _record(requests: int, elapsed: float, batch: int, latencies_ms: list[float], what: str, **settings) -> dict:
    ms = np.array(latencies_ms)
    return {**settings, "what": what, "requests": int(requests), "seconds": round(elapsed, 3),
            "items_per_s": round(requests * batch / elapsed, 2),
            "request_latency_ms": {"p50": round(float(np.percentile(ms, 50)), 3),
                                   "p90": round(float(np.percentile(ms, 90)), 3)}}


def _batch(inputs: list[dict[str, np.ndarray]]) -> int:
    return int(next(iter(inputs[0].values())).shape[0])


def measure_throughput(runs: list[Callable[[dict], object]], inputs: list[dict[str, np.ndarray]],
                       scenario: ThroughputScenario) -> dict:
    """`runs`: one callable per stream (each bound to its own session)."""
    for run in runs:
        for i in range(scenario.warmup):
            run(inputs[i % len(inputs)])
    done = [0] * len(runs)
    latencies: list[list[float]] = [[] for _ in runs]
    stop = threading.Event()
    start_gate = threading.Barrier(len(runs) + 1)

    def worker(index: int, run: Callable[[dict], object]) -> None:
        start_gate.wait()
        i = index
        while not stop.is_set():
            t0 = time.perf_counter()
            run(inputs[i % len(inputs)])
            latencies[index].append((time.perf_counter() - t0) * 1000.0)
            done[index] += 1
            i += 1

    threads = [threading.Thread(target=worker, args=(i, run), daemon=True) for i, run in enumerate(runs)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    started = time.perf_counter()
    while True:
        time.sleep(0.01)
        elapsed = time.perf_counter() - started
        if sum(done) >= scenario.min_requests and elapsed >= scenario.min_time_s:
            break
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    what = f"{len(runs)} sessions, one blocking run() per Python thread, model only"
    return _record(sum(done), elapsed, _batch(inputs), [v for lat in latencies for v in lat], what,
                   streams=len(runs), method="threads")


def measure_async_throughput(runner: AsyncRunner, inputs: list[dict[str, np.ndarray]],
                             scenario: ThroughputScenario) -> dict:
    """Keeps the runner's queue full until enough requests have completed and enough time has passed."""
    for i in range(scenario.warmup * max(1, runner.requests)):
        runner.submit(inputs[i % len(inputs)], None)
    runner.wait()
    latencies: list[float] = []  # appended from the runtime's callback threads; list.append holds the GIL
    submitted = 0
    started = time.perf_counter()
    while len(latencies) < scenario.min_requests or time.perf_counter() - started < scenario.min_time_s:
        runner.submit(inputs[submitted % len(inputs)], latencies.append)
        submitted += 1
    runner.wait()
    elapsed = time.perf_counter() - started
    chosen = ", ".join(f"{key}={value}" for key, value in runner.settings.items())
    what = f"one model behind the runtime's async queue ({chosen}), model only"
    return _record(submitted, elapsed, _batch(inputs), latencies, what, method="async-queue",
                   streams=runner.settings.get("num_streams"), **runner.settings)


def throughput_runner(session, streams: int) -> AsyncRunner | None:
    """The session's own asynchronous queue, when its runtime has one and throughput is measured; else None."""
    make = getattr(session, "throughput_runner", None)
    return make(streams) if make is not None and streams else None


def measure_concurrent(runner: AsyncRunner | None, load_stream: Callable[[], Any],
                       inputs_by_batch: dict[int, list[dict[str, np.ndarray]]],
                       scenario: ThroughputScenario) -> dict[int, dict]:
    """Throughput per batch size: through `runner` when there is one, else `scenario.streams` sessions from
    `load_stream` in threads (loaded here and released on return, so memory peaks are the scenario's own)."""
    if runner is not None:
        return {b: measure_async_throughput(runner, inputs, scenario) for b, inputs in inputs_by_batch.items()}
    sessions = [load_stream() for _ in range(scenario.streams)]
    return {b: measure_throughput([s.run for s in sessions], inputs, scenario) for b, inputs in inputs_by_batch.items()}
