"""How many threads a session gets on a busy machine.

One thread per core is right on an idle machine and the worst case on a busy one: threads that wait for cores held by
another job stall each other at every synchronisation point (on a loaded 2-core machine a PyTorch forward pass took
3.8 s with 2 threads and 0.44 s with 1). So when the machine is busy before anything is timed, a short probe times the
default thread count against fewer, and the run keeps the fastest and says why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .interleaved import RoundsScenario, run_rounds
from .load import judge, probe


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"threads": self.threads, "reason": self.reason}


def _candidates(default: int) -> list[int]:
    counts, n = [], default
    while n >= 1:
        counts.append(n)
        n //= 2
    return counts if counts[-1] == 1 else counts + [1]


def choose_threads(load: Callable[[int], Any], inputs: list[dict[str, np.ndarray]], default: int,
                   rounds: int = 6) -> ThreadChoice:
    """`load(threads)` gives a session; `inputs` are batches it can run. The candidates are timed in alternating
    rounds, like the speed-ups, so that a load that comes and goes during the probe does not decide it."""
    busy = judge(probe())
    if not busy:
        return ThreadChoice(default, f"{default} (one per physical core): the machine was idle before timing")
    if default <= 1:
        return ThreadChoice(1, f"1: the machine was busy ({'; '.join(busy.reasons)}) and one thread is the minimum")
    sessions = {threads: load(threads) for threads in _candidates(default)}
    timed = run_rounds({t: (lambda i, s=s: s.run(inputs[i % len(inputs)])) for t, s in sessions.items()},
                       RoundsScenario(rounds=rounds, warmup=1))
    measured = {t: float(np.median(seconds)) for t, seconds in timed.seconds.items()}
    best = min(measured, key=measured.get)
    timings = ", ".join(f"{t} thread{'s' * (t > 1)} {s * 1000:.1f} ms" for t, s in measured.items())
    return ThreadChoice(best, f"{best}: the machine was busy ({'; '.join(busy.reasons)}); probe per call: {timings}")
