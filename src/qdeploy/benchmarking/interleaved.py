"""Speed ratios that hold on a busy machine: the baseline and every variant timed alternately, round after round.

A ratio of two latencies measured minutes apart carries whatever the machine did in between (another job, a turbo
state, a neighbour on the hypervisor). Timed in the same round, a few hundred milliseconds apart, both sides see the
same machine, so the per-round ratio cancels most of it; the median over rounds and its distribution-free interval
say how sure the ratio is. The order within a round rotates so that no session always follows the same one.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from .load import LoadWatch, judge

BLOCK_S = 0.1  # each session's block in a round lasts about this long, so the timer's resolution never matters
# Between blocks: the previous session's thread pool (ONNX Runtime, OpenMP, TBB) spins after its last call and takes
# cores from the next session. Measured on 2 cores (ORT fp32 and dynamic int8 alternating): no pause gave a per-round
# cv of 22 % in a pattern set by which session ran before; 30 ms brought it to 3-7 %.
PAUSE_S = 0.03


@dataclass(frozen=True)
class RoundsScenario:
    rounds: int = 15
    warmup: int = 3  # calls per session before the first round
    cv_threshold: float = 0.10  # per-round times of one session varying more than this mark the measurement busy

    def __post_init__(self):
        if self.rounds < 6:
            # Below 6 rounds no order statistic bounds the median at 95 %.
            raise ConfigError(f"rounds must be >= 6 for a 95 % interval of the median ratio, got {self.rounds}")


@dataclass(frozen=True)
class Ratio:
    median: float
    low: float
    high: float
    rounds: int

    def to_dict(self) -> dict:
        return {"median": round(self.median, 3), "interval": [round(self.low, 3), round(self.high, 3)],
                "rounds": self.rounds}


def median_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the median from order statistics (the sign-test interval): the k-th smallest
    and k-th largest values, k the largest with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    alpha = (1 - confidence) / 2
    k, cumulative = 0, 0.0
    while True:
        cumulative += math.comb(n, k) / 2 ** n
        if cumulative > alpha:
            break
        k += 1
    k = max(k, 1)  # n too small for the confidence: the extremes
    return float(x[k - 1]), float(x[n - k])


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> Ratio:
    """Per-round ratio numerator/denominator (a speed-up when both are times: baseline over variant)."""
    per_round = np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    low, high = median_interval(per_round)
    return Ratio(float(np.median(per_round)), low, high, len(per_round))


@dataclass
class Rounds:
    """Seconds per call of each session, one value per round (the mean of that round's block of calls)."""
    seconds: dict[str, np.ndarray]
    calls: dict[str, int]
    load: dict
    busy: list[str]  # the machine's reasons (load, steal, other processes): every session's
    cv_threshold: float = 0.10

    def ratio_cv(self, baseline: str, name: str) -> float:
        per_round = self.seconds[baseline] / self.seconds[name]
        return float(per_round.std(ddof=1) / per_round.mean()) if len(per_round) > 1 else 0.0

    def noisy(self, baseline: str, name: str) -> list[str]:
        """The machine's reasons, and the cv of the per-round ratio when it exceeds the threshold. The ratio's cv,
        not each session's: a slowdown both sides of a round share is what interleaving cancels (measured here: every
        session's per-round cv at 10-22 % at batch 1, and the ratios' intervals still within 2 %)."""
        cv = self.ratio_cv(baseline, name)
        over = cv > self.cv_threshold
        return self.busy + [f"cv of the per-round ratio {cv * 100:.0f} % > {self.cv_threshold * 100:.0f} %"] * over

    def ratio(self, baseline: str, name: str) -> Ratio:
        return ratio(self.seconds[baseline], self.seconds[name])

    def cv(self, name: str) -> float:
        s = self.seconds[name]
        return float(s.std(ddof=1) / s.mean()) if len(s) > 1 and s.mean() else 0.0


def run_rounds(calls: dict[str, Callable[[int], object]], scenario: RoundsScenario,
               tick: Callable[[], None] | None = None) -> Rounds:
    """`calls[name](i)` runs one request of session `name` on input number i. Every session is warmed up, then
    timed in blocks of the same length, the order rotating each round."""
    names = list(calls)
    per_block: dict[str, int] = {}
    for name in names:
        for i in range(max(1, scenario.warmup)):  # the first calls compile and allocate: not what a block costs
            calls[name](i)
        count, t0 = 0, time.perf_counter()
        while count < 10 and time.perf_counter() - t0 < BLOCK_S / 4:
            calls[name](count)
            count += 1
        one = (time.perf_counter() - t0) / count
        per_block[name] = max(1, min(200, round(BLOCK_S / max(one, 1e-6))))
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with LoadWatch() as watch:
        for r in range(scenario.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                n = per_block[name]
                time.sleep(PAUSE_S)
                calls[name](r * n)  # untimed: the switch from another session left cold caches behind
                t0 = time.perf_counter()
                for i in range(n):
                    calls[name](r * n + i)
                seconds[name].append((time.perf_counter() - t0) / n)
            if tick:
                tick()
    arrays = {name: np.array(values) for name, values in seconds.items()}
    return Rounds(arrays, per_block, {"before_load1": round(watch.load1_before, 2), **watch.sample.to_dict()},
                  judge(watch.sample, watch.load1_before).reasons, scenario.cv_threshold)
