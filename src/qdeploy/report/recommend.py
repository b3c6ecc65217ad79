"""Which artifact to ship on each machine type and batch size, and why, in one or two lines with the numbers.

The rule, in order:
1. A variant qualifies when its headline quality metric passed its tolerance (judged on the paired interval and test,
   see evaluation/stats.py). The fp32 artifacts qualify by definition of the baseline, unless their own check failed.
2. Among qualifying quantized variants the fastest by median speed-up wins; variants whose speed-up intervals overlap
   the fastest one's are tied, and a tie goes to the smaller artifact, then to the simpler runtime.
3. When nothing quantized qualifies, or the winner's interval overlaps the fastest fp32 artifact's (int8 buys nothing
   measurable here), the fp32 artifact of the fastest runtime is recommended instead, and the line says so.

Standard library only, like the renderers: a report is re-judged from report.json alone (`qdeploy compare`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .formatting import speedup_text
from .model import Quality, Report, Row, as_report

BASELINE = "pytorch-fp32"
# Simpler first: what a deployment has to install (onnxruntime ~20 MB, openvino ~60 MB, GPU stacks, then PyTorch).
# The engines come after the plain runtimes: each is one more package on top of them.
RUNTIME_ORDER = ("ort-cpu", "openvino-cpu", "ort-genai", "openvino-genai", "ort-openvino", "ort-cuda", "ort-tensorrt",
                 "torch")


@dataclass
class Choice:
    machine: str
    batch: int
    seq_len: int
    variant: str
    runtime: str
    format: str
    precision: str
    fp32_fallback: bool  # nothing quantized qualified or beat fp32 beyond noise
    speedup: float | None
    interval: list[float] | None
    vs: str
    size_mb: float | None
    busy: bool
    quality: dict[str, Any] | None
    headline: str
    reasons: list[str] = field(default_factory=list)
    tied_with: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    judged_on: str | None
    tolerance: str | None
    choices: list[Choice]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_fp32(row: Row) -> bool:
    return row.precision == "fp32"


def _headline_quality(row: Row) -> Quality | None:
    return row.quality if isinstance(row.quality, Quality) else None


def _qualifies(row: Row) -> bool:
    if row.variant == BASELINE:
        return True
    q = _headline_quality(row)
    if q is None:
        return _is_fp32(row)  # an fp32 export is checked against PyTorch when it is made; nothing else is unjudged
    verdict = q.verdict or {}
    return bool(verdict.get("qualifies", _is_fp32(row)))


def _overlap(a: Row, b: Row) -> bool:
    ia, ib = a.speedup_interval, b.speedup_interval
    if not ia or not ib:
        return a.speedup == b.speedup
    return ia[0] <= ib[1] and ib[0] <= ia[1]


def _simplicity(row: Row) -> int:
    runtime = row.runtime
    return RUNTIME_ORDER.index(runtime) if runtime in RUNTIME_ORDER else len(RUNTIME_ORDER)


def _pick(rows: list[Row]) -> tuple[Row, list[Row]]:
    """The fastest row, or among those tied with it (overlapping intervals) the smallest, then the simplest."""
    fastest = max(rows, key=lambda r: r.speedup)
    tied = [r for r in rows if _overlap(r, fastest)]
    winner = min(tied, key=lambda r: (r.size_mb or float("inf"), _simplicity(r), -r.speedup))
    return winner, [r for r in tied if r is not winner]


def _x(row: Row, against: str = "") -> str:
    return speedup_text(row.speedup, row.speedup_interval, against=against)


def _points(q: Quality, value: float) -> str:
    if q.scale in ("unit", "points"):
        points = value * (100 if q.scale == "unit" else 1)
        return f"{points:+.1f} point{'s' * (abs(round(points, 1)) > 1)}"
    return f"{value:+.3g}"


def _quality_text(q: Quality | None) -> str:
    if not q or q.delta is None:
        return "quality not measured" if not q else f"{q.metric} {q.value:.4g}"
    if str(q.tolerance).startswith(">="):  # a floor: the value itself is what is judged
        return f"{q.metric} {q.value:.4f} (floor {q.tolerance[2:].strip()})"
    verdict = (q.verdict or {}).get("phrase")
    return f"{q.metric} {_points(q, q.delta)}" + (f", {verdict}" if verdict else "")


def _name(row: Row) -> str:
    return f"{row.variant} on {row.runtime}"


def _machine_cause(machine: dict) -> str | None:
    isa = machine.get("isa") or {}
    if not isa.get("avx512_vnni") and not isa.get("avx_vnni") and not isa.get("amx"):
        simd = "AVX-512" if isa.get("avx512f") else "AVX2" if isa.get("avx2") else "no AVX2"
        return f"this CPU has {simd} without VNNI, so int8 matrix products gain little over fp32"
    return None


def _contrast(winner: Row, rows: list[Row], machine: dict) -> list[str]:
    """The one or two facts a reader would ask about next: a faster variant that lost quality, and an int8 variant
    slower than its own runtime's fp32 (with the machine's part in it when that is the cause)."""
    reasons = []
    others = [r for r in rows if _qualifies(r) and not _is_fp32(r) and r.runtime != winner.runtime]
    if others and not _is_fp32(winner):  # for a reader who cannot install the winner's runtime
        best = max(others, key=lambda r: r.speedup)
        reasons.append(f"best on {best.runtime}: {best.variant} {_x(best)}, "
                       f"{_quality_text(_headline_quality(best))}")
    faster = [r for r in rows if not _qualifies(r) and r.speedup > winner.speedup]
    if faster:
        best = max(faster, key=lambda r: r.speedup)
        reasons.append(f"{_name(best)} was faster ({_x(best)}) but did not qualify: "
                       f"{_quality_text(_headline_quality(best))}")
    slower = [r for r in rows if not _is_fp32(r) and (r.runtime_speedup_interval or [1, 1])[1] < 1]
    if slower:
        worst = min(slower, key=lambda r: r.runtime_speedup)
        cause = _machine_cause(machine) if "int8" in str(worst.precision) else None
        reasons.append(f"{_name(worst)} was {_x(worst)} here, slower than {worst.runtime}'s own fp32 "
                       f"({worst.runtime_speedup:.2f}x)" + (f": {cause}" if cause else ""))
    return reasons


def _choose(rows: list[Row], machine_name: str, machine: dict) -> Choice | None:
    timed = [r for r in rows if r.speedup is not None]
    if not timed:
        return None
    fp32 = [r for r in timed if _is_fp32(r) and _qualifies(r)]
    quantized = [r for r in timed if not _is_fp32(r) and _qualifies(r)]
    reasons: list[str] = []
    fallback = False
    fp32_best, fp32_tied = _pick(fp32) if fp32 else (None, [])
    if quantized:
        winner, tied = _pick(quantized)
        if fp32_best is not None and _overlap(winner, fp32_best):
            reasons.append(f"{_name(winner)}, the best quantized variant, was within noise of fp32: {_x(winner)} "
                           f"against {_x(fp32_best)} for {_name(fp32_best)}")
            winner, tied, fallback = fp32_best, fp32_tied, True
    elif fp32_best is not None:
        judged = [r for r in timed if not _is_fp32(r)]
        reasons.append("no quantized variant qualified" if judged else "no quantized variant was measured")
        winner, tied, fallback = fp32_best, fp32_tied, True
    else:
        return None
    if tied:
        reasons.append("tied within intervals with " + ", ".join(f"{_name(r)} {_x(r)}" for r in tied)
                       + ": the tie goes to the smaller artifact, then the simpler runtime")
    reasons += _contrast(winner, timed, machine)
    busy = [r for r in rows if r.busy_reasons]
    if busy:
        reasons.append("timing was disturbed: " + "; ".join(dict.fromkeys(x for r in busy for x in r.busy_reasons))
                       + " (the ratios come from interleaved rounds, which cancel most of it)")
    size = winner.size_mb
    reference = winner.speed_reference or f"{BASELINE}@torch"
    against = "PyTorch fp32" if reference == f"{BASELINE}@torch" else reference.replace("@", " on ")
    if winner.generation:  # a language model's rounds timed decoding (work.DECODE_TIMED)
        against += " decoding"
    headline = (f"ship {_name(winner)}: {_x(winner, against)}, {_quality_text(_headline_quality(winner))}"
                + (f", {size:.0f} MB" if size is not None else ""))
    if fallback:
        headline += " (fp32: int8 is not worth it here)"
    return Choice(machine=machine_name, batch=winner.batch, seq_len=winner.seq_len, variant=winner.variant,
                  runtime=winner.runtime, format=winner.format, precision=winner.precision,
                  fp32_fallback=fallback, speedup=winner.speedup, interval=winner.speedup_interval,
                  vs=reference, size_mb=size, busy=bool(busy),
                  quality=_plain(_headline_quality(winner)), headline=headline, reasons=reasons,
                  tied_with=[_name(r) for r in tied])


def _plain(quality: Quality | None) -> dict[str, Any] | None:
    return None if quality is None else quality.to_dict()  # the recommendation is JSON as it has always been


def recommend(report: Report | dict) -> Recommendation:
    report = as_report(report)
    rows = report.results
    machines = report.machines or {}
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.machine or "local", row.batch, row.seq_len), []).append(row)
    choices = []
    for (machine_name, _, _), group in groups.items():
        machine = machines.get(machine_name) or report.machine or {}
        choice = _choose(group, machine_name, machine)
        if choice is not None:
            choices.append(choice)
    judged = next((q for r in rows if (q := _headline_quality(r))), None)
    return Recommendation(judged_on=judged.metric if judged else None,
                          tolerance=judged.tolerance if judged else None, choices=choices)
