"""Whether a run did what was asked: which cells failed and why, and whether every requested method or every
requested runtime failed, in which case the run failed (the CLI exits 1 unless --keep-going).

Read from the report alone, so that a resumed or re-rendered run is judged the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..plan import method_specs
from ..report.model import Report

ALL = "(all)"
BASELINE_RUNTIME = "torch"


@dataclass(frozen=True)
class Failure:
    variant: str
    runtime: str
    machine: str | None
    reason: str

    @property
    def retryable(self) -> bool:
        """A runtime missing from this installation ("(all)" variants on one runtime, no machine) fails again."""
        return not (self.variant == ALL and self.runtime != ALL and self.machine is None)

    def line(self) -> str:
        on = f" ({self.machine})" if self.machine else ""
        return f"{self.variant} on {self.runtime}{on}: {self.reason}"


@dataclass(frozen=True)
class Outcome:
    failures: tuple[Failure, ...]
    methods: tuple[str, ...]  # the variants the plan asked for
    failed_methods: tuple[str, ...]  # ... of which none has a measured row
    runtimes: tuple[str, ...]  # the runtimes that were asked for and could be tried here, the baseline's aside
    failed_runtimes: tuple[str, ...]

    @property
    def failed(self) -> bool:
        every_method = bool(self.methods) and len(self.failed_methods) == len(self.methods)
        every_runtime = bool(self.runtimes) and len(self.failed_runtimes) == len(self.runtimes)
        return every_method or every_runtime

    def summary(self) -> str:
        what = []
        if self.methods and len(self.failed_methods) == len(self.methods):
            what.append(f"every requested method failed ({', '.join(self.failed_methods)})")
        if self.runtimes and len(self.failed_runtimes) == len(self.runtimes):
            what.append(f"every requested runtime failed ({', '.join(self.failed_runtimes)})")
        return "; ".join(what)


def _requested_methods(report: Report) -> tuple[str, ...]:
    methods = (report.plan or {}).get("methods")
    if isinstance(methods, list):
        return tuple(spec.variant for spec in method_specs(methods))
    return tuple(v.get("name") for v in report.variants or [] if v.get("name"))


def outcome(report: Report) -> Outcome:
    measured = {(row.variant, row.runtime) for row in report.results}
    failures = tuple(Failure(str(s.get("variant", ALL)), str(s.get("runtime", ALL)), s.get("machine"),
                             str(s.get("reason", "")).splitlines()[0] if s.get("reason") else "")
                     for s in report.skipped or [])
    methods = _requested_methods(report)
    failed_methods = tuple(m for m in methods if not any(variant == m for variant, _ in measured))
    asked = (report.plan or {}).get("runtimes") or []
    if list(asked) == ["auto"]:
        # "every runtime here": one that is not installed was never tried; one that was tried and failed counts
        asked = dict.fromkeys([*(runtime for _, runtime in measured),
                               *(f.runtime for f in failures if f.variant != ALL and f.runtime != ALL)])
    # PyTorch runs the baseline: a run that measured only the baseline measured nothing that was asked about
    runtimes = tuple(r for r in asked if r != BASELINE_RUNTIME) or tuple(asked)
    failed_runtimes = tuple(r for r in runtimes if not any(runtime == r for _, runtime in measured))
    return Outcome(failures, methods, failed_methods, runtimes, failed_runtimes)
