from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError

MODEL_ONLY = "model only (tokenized inputs, no tokenization in the timed loop)"
FIRST_TOKEN = "time to the first token through the engine (the prompt's forward pass and one greedy choice)"


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
    what: str = MODEL_ONLY
    timing: str = "model"

    def record(self) -> dict[str, Any]:
        """The fields a report row keeps for a timing other than the row's own (model-only) one."""
        return {"what": self.what, "latency_ms": self.latency_ms, "throughput_per_s": self.throughput_per_s,
                "iterations": self.iterations, "cv": self.cv, "noisy": self.noisy}


def _percentile(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def time_calls(call: Callable[[Any], object], items: Sequence, scenario: LatencyScenario,
               tick: Callable[[], None] | None = None) -> np.ndarray:
    """Milliseconds per call, cycling through `items`, after the warm-up."""
    for i in range(scenario.warmup):
        call(items[i % len(items)])
    times: list[float] = []
    start = time.perf_counter()
    while True:
        item = items[len(times) % len(items)]
        t0 = time.perf_counter()
        call(item)
        times.append(time.perf_counter() - t0)
        if tick:
            tick()
        elapsed = time.perf_counter() - start
        enough = len(times) >= scenario.min_reps and elapsed >= scenario.min_time_s
        if enough or elapsed >= scenario.max_time_s and len(times) >= 3:
            break
    return np.array(times) * 1000.0


def summarize(ms: np.ndarray, batch: int, seq_len: int, scenario: LatencyScenario, what: str = MODEL_ONLY,
              timing: str = "model") -> Measurement:
    mean = float(ms.mean())
    stdev = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    cv = stdev / mean if mean else 0.0
    return Measurement(
        batch=int(batch), seq_len=int(seq_len), iterations=len(ms),
        latency_ms={"p50": _percentile(ms, 50), "p90": _percentile(ms, 90), "p99": _percentile(ms, 99),
                    "mean": round(mean, 3), "stdev": round(stdev, 3), "min": round(float(ms.min()), 3)},
        throughput_per_s=round(batch * 1000.0 / mean, 2), cv=round(cv, 4), noisy=cv > scenario.cv_threshold,
        what=what, timing=timing,
    )


def measure_latency(run: Callable[[dict], object], inputs: list[dict[str, np.ndarray]], scenario: LatencyScenario,
                    tick: Callable[[], None] | None = None) -> Measurement:
    batch_size, seq_len = next(iter(inputs[0].values())).shape[:2]
    return summarize(time_calls(run, inputs, scenario, tick), batch_size, seq_len, scenario)


def measure_session(session, inputs: list[dict[str, np.ndarray]], scenario: LatencyScenario,
                    tick: Callable[[], None] | None = None) -> Measurement:
    """Model-only latency of a session.

    A session whose model runs on a device (`bind`, e.g. ONNX Runtime on CUDA with I/O binding) gets its inputs
    copied there once, before the clock starts, and keeps its outputs there: the host-device copies are part of
    the end-to-end timing, not of the model's.
    """
    batch_size, seq_len = next(iter(inputs[0].values())).shape[:2]
    what = MODEL_ONLY
    if getattr(session, "bind", None) is not None:
        what = MODEL_ONLY.replace(")", "; inputs and outputs resident on the device)")
    if getattr(session, "first_token", None) is not None:
        what = FIRST_TOKEN
    call = request(session, inputs)
    return summarize(time_calls(call, range(len(inputs)), scenario, tick), batch_size, seq_len, scenario, what)


def request(session, inputs: list[dict[str, np.ndarray]]) -> Callable[[int], object]:
    """One model-only request of `session` on input number i (cycling). A session that binds its inputs to a device
    (ONNX Runtime on CUDA with I/O binding) gets them copied there once, here, before any clock starts."""
    first_token = getattr(session, "first_token", None)
    if first_token is not None:  # an engine that returns tokens, not logits: its prefill ends with the first token
        return lambda i: first_token(inputs[i % len(inputs)])
    bind = getattr(session, "bind", None)
    if bind is not None:
        bound = [bind(batch) for batch in inputs]
        return lambda i: bound[i % len(bound)]()
    return lambda i: session.run(inputs[i % len(inputs)])
