"""How busy the machine was while something was timed: load average, CPU steal, and the CPU other processes took.

The load average lags by a minute and counts this process's own threads, so it is recorded but is not the only test:
the share of the machine's CPU time that other processes used during the measurement (system busy time minus this
process's own) sees a competing job at once, and steal time sees a hypervisor that hands our cores to someone else.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

# A machine is called busy past these; each is stated in the reason so a reader can judge it.
STEAL_PCT = 3.0  # a few percent of stolen time already shows in per-call latencies
OTHERS_CPU_PCT = 25.0  # other processes took more than a quarter of the machine


@dataclass(frozen=True)
class LoadSample:
    load1: float  # one-minute load average at the end of the window
    steal_pct: float  # CPU time stolen by the hypervisor, % of the machine's CPU time in the window
    others_cpu_pct: float  # CPU time used by other processes, % of the machine's CPU time in the window
    own_cpu_pct: float  # CPU time this process used, % of the machine's CPU time in the window
    seconds: float

    def to_dict(self) -> dict:
        return {k: round(v, 2) for k, v in asdict(self).items()}


def _cores() -> int:
    return os.cpu_count() or 1


class LoadWatch:
    """`with LoadWatch() as watch:` around a measurement; `watch.before` and `watch.sample` afterwards."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()

    def _snapshot(self):
        system = self._psutil.cpu_times()
        own = self._process.cpu_times()
        return time.perf_counter(), system, own.user + own.system + own.children_user + own.children_system

    def __enter__(self) -> "LoadWatch":
        self.load1_before = os.getloadavg()[0]
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc) -> None:
        self.sample = self.since(self._start)

    def since(self, start) -> LoadSample:
        t0, sys0, own0 = start
        t1, sys1, own1 = self._snapshot()
        total = sum(sys1) - sum(sys0)  # every state, idle included: the machine's CPU time in the window
        if total <= 0:
            return LoadSample(os.getloadavg()[0], 0.0, 0.0, 0.0, t1 - t0)
        idle = (sys1.idle - sys0.idle) + (getattr(sys1, "iowait", 0.0) - getattr(sys0, "iowait", 0.0))
        steal = getattr(sys1, "steal", 0.0) - getattr(sys0, "steal", 0.0)
        busy = total - idle - steal
        own = max(0.0, own1 - own0)
        others = max(0.0, busy - own)
        return LoadSample(load1=os.getloadavg()[0], steal_pct=100 * steal / total, others_cpu_pct=100 * others / total,
                          own_cpu_pct=100 * min(own, total) / total, seconds=t1 - t0)


def probe(seconds: float = 0.5) -> LoadSample:
    """The machine's load over a short idle wait of this process (before anything is timed)."""
    with LoadWatch() as watch:
        time.sleep(seconds)
    return watch.sample


@dataclass
class Busy:
    """Why a measurement's machine counts as busy (empty: it did not)."""
    reasons: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasons)


def judge(sample: LoadSample, load1_before: float | None = None, cv: float | None = None,
          cv_threshold: float | None = None) -> Busy:
    cores = _cores()
    reasons = []
    load1 = max(sample.load1, load1_before or 0.0)
    if load1 > cores:
        reasons.append(f"load average {load1:.1f} > {cores} cores")
    if sample.steal_pct > STEAL_PCT:
        reasons.append(f"CPU steal {sample.steal_pct:.0f} % > {STEAL_PCT:.0f} %")
    if sample.others_cpu_pct > OTHERS_CPU_PCT:
        reasons.append(f"other processes used {sample.others_cpu_pct:.0f} % of the CPU (> {OTHERS_CPU_PCT:.0f} %)")
    if cv is not None and cv_threshold is not None and cv > cv_threshold:
        reasons.append(f"cv {cv * 100:.0f} % > {cv_threshold * 100:.0f} %")
    return Busy(reasons)
