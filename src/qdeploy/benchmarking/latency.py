from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class LatencyScenario:
    """One request at a time. Runs until both `min_reps` and `min_time_s` are reached (or `max_time_s` passes)."""
    warmup: int = 5
    min_reps: int = 20
    min_time_s: float = 2.0
    max_time_s: float = 60.0
    cv_threshold: float = 0.10  # coefficient of variation above which a measurement is flagged as noisy

    def __post_init__(self):
        if self.warmup < 0 or self.min_reps < 3 or self.min_time_s < 0:
            raise ConfigError("benchmark needs warmup >= 0, min_reps >= 3 and min_time_s >= 0")


@dataclass
class Measurement:
    batch: int
    seq_len: int
    iterations: int
    latency_ms: dict[str, float]
    throughput_per_s: float
    cv: float
    noisy: bool
    what: str = "model only (tokenized inputs, no tokenization in the timed loop)"


def _percentile(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def measure_latency(run: Callable[[dict], object], inputs: list[dict[str, np.ndarray]], scenario: LatencyScenario,
                    tick: Callable[[], None] | None = None) -> Measurement:
    for i in range(scenario.warmup):
        run(inputs[i % len(inputs)])
    times: list[float] = []
    start = time.perf_counter()
    while True:
        batch = inputs[len(times) % len(inputs)]
        t0 = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t0)
        if tick:
            tick()
        elapsed = time.perf_counter() - start
        enough = len(times) >= scenario.min_reps and elapsed >= scenario.min_time_s
        if enough or elapsed >= scenario.max_time_s and len(times) >= 3:
            break
    ms = np.array(times) * 1000.0
    mean = float(ms.mean())
    stdev = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    cv = stdev / mean if mean else 0.0
    batch_size, seq_len = next(iter(inputs[0].values())).shape[:2]
    return Measurement(
        batch=int(batch_size), seq_len=int(seq_len), iterations=len(ms),
        latency_ms={"p50": _percentile(ms, 50), "p90": _percentile(ms, 90), "p99": _percentile(ms, 99),
                    "mean": round(mean, 3), "stdev": round(stdev, 3), "min": round(float(ms.min()), 3)},
        throughput_per_s=round(batch_size * 1000.0 / mean, 2), cv=round(cv, 4), noisy=cv > scenario.cv_threshold,
    )


