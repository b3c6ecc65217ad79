"""Throughput under concurrent requests: one stream per session, each in its own thread.

Native runtimes (ONNX Runtime, OpenVINO, PyTorch ops) release the GIL while they compute, so Python threads issue
truly concurrent requests; each stream's session gets cores // streams threads, as a serving process would.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

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
            latencies[index].append(time.perf_counter() - t0)
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
    batch = int(next(iter(inputs[0].values())).shape[0])
    ms = np.concatenate([np.array(lat) for lat in latencies]) * 1000.0
    return {"streams": len(runs), "requests": int(sum(done)), "seconds": round(elapsed, 3),
            "items_per_s": round(sum(done) * batch / elapsed, 2),
            "request_latency_ms": {"p50": round(float(np.percentile(ms, 50)), 3),
                                   "p90": round(float(np.percentile(ms, 90)), 3)}}
