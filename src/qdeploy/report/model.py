"""The report as typed values: one Row per variant x runtime x batch x machine, its Qualities, and the Report.

report.json stays what it was (schema ``qdeploy.report/1``): `to_dict()` writes the same keys in the same order, and
`from_dict()` reads reports of any age. Measurements whose shape belongs to the code that made them (latency
percentiles, other timings, throughput under streams, generation, the machine's load, the runtime's settings) stay
plain dicts inside a Row; the renderers check their types because a hand-edited report may hold anything.

A value read from JSON keeps the keys its source had, in the source's order, and the keys this model does not know
(`extra`): an older report is written back as it was read, not with the newer keys added as nulls.

Standard library only, like the renderers: a report is rendered and re-judged from report.json alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Self

REPORT_SCHEMA = "qdeploy.report/1"
_INTERNAL = {"internal": True}  # not a key of report.json


def _key(f) -> str:
    return f.metadata.get("key", f.name)


@dataclass(frozen=True)
class _Record:
    """to_dict/from_dict by field, with the JSON key in a field's metadata where the attribute is named otherwise."""
    # Keys a writer has only ever written when it had a value for them.
    _omitted_when_none: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def _fields(cls):
        return [f for f in fields(cls) if not f.metadata.get("internal")]

    @classmethod
    def _read(cls, name: str, value: Any) -> Any:
        return value

    def _write(self, name: str, value: Any) -> Any:
        return value

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        by_key = {_key(f): f.name for f in cls._fields() if not f.metadata.get("transient")}
        known = {by_key[k]: cls._read(by_key[k], v) for k, v in data.items() if k in by_key}
        extra = {k: v for k, v in data.items() if k not in by_key}
        return cls(**known, extra=extra, source_keys=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        own = {_key(f): f for f in self._fields() if not f.metadata.get("transient")}
        if self.source_keys is None:  # made by a writer: every key, in the order the schema has always had
            keys = [k for k, f in own.items() if not (k in self._omitted_when_none and getattr(self, f.name) is None)]
        else:  # read from JSON: its keys in its order, then any field a writer has since set
            keys = list(self.source_keys) + [k for k, f in own.items() if k not in self.source_keys
                                             and getattr(self, f.name) != _default(f)]
        out = {}
        for key in keys:
            if key in own:
                out[key] = self._write(own[key].name, getattr(self, own[key].name))
            elif key in self.extra:
                out[key] = self.extra[key]
        return out


def _default(f) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default


@dataclass(frozen=True)
class Quality(_Record):
    """One metric of one row: its value with 95 % interval over n items and, once related to fp32, the change, the
    paired test on the same items (`paired`: delta, low, high, p, test, n) and the verdict against the tolerance."""
    metric: str | None = None
    value: float | None = None
    interval: list[float] | None = None
    n: int | None = None
    fp32_value: float | None = None
    scale: str | None = None  # "unit" for 0..1 scores, which people read in points
    delta: float | None = None
    gain: float | None = None  # the delta signed so that positive is better
    paired: dict[str, Any] | None = None
    tolerance: str | None = None
    verdict: dict[str, Any] | None = None  # qualifies, phrase
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata=_INTERNAL)
    source_keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False, metadata=_INTERNAL)
    # The baseline has no paired test or verdict against itself; a metric without a tolerance has none.
    _omitted_when_none: ClassVar[frozenset[str]] = frozenset({"paired", "tolerance", "verdict"})

    @property
    def delta_interval(self) -> list[Any] | None:
        """The paired 95 % interval of the delta, when the report has one."""
        return [self.paired.get("low"), self.paired.get("high")] if isinstance(self.paired, dict) else None

    @property
    def qualifies(self) -> bool | None:
        return self.verdict.get("qualifies") if isinstance(self.verdict, dict) else None

    @property
    def phrase(self) -> str | None:
        return self.verdict.get("phrase") if isinstance(self.verdict, dict) else None


def _quality(value: Any) -> Any:
    # Anything but a dict is kept as read: the renderers skip it, and the report is written back unchanged.
    return Quality.from_dict(value) if isinstance(value, dict) else value


def _plain(value: Any) -> Any:
    return value.to_dict() if isinstance(value, Quality) else value


@dataclass(frozen=True)
class Row(_Record):
    """One variant on one runtime at one batch and length on one machine type: what was measured, and (from the
    baseline module) how it compares with PyTorch fp32 of the same machine, batch and length."""
    variant: str | None = None
    runtime: str | None = None
    format: str | None = None
    precision: str | None = None
    batch: int | None = None
    seq_len: int | None = None
    latency_ms: dict[str, Any] | None = None  # p50, p90, p99, mean, stdev, min
    throughput_per_s: float | None = None
    size_mb: float | None = None
    peak_rss_mb: float | None = None
    rss_delta_mb: float | None = None  # what loading the variant added to the process
    load_s: float | None = None
    iterations: int | None = None
    cv: float | None = None
    noisy: bool | None = None
    what: str | None = None  # what the clock covered
    timings: dict[str, Any] | None = None  # other timings (end-to-end), each with its own what and latency
    concurrent: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    runtime_settings: dict[str, Any] | None = None
    machine: str | None = None
    qualities: list[Quality] = field(default_factory=list)
    session: str | None = None  # the process that measured the row
    speed: dict[str, Any] | None = None  # this row's share of the interleaved rounds
    speed_reference: str | None = None
    speed_session: str | None = None
    busy_reasons: list[str] = field(default_factory=list)
    load: dict[str, Any] | None = None
    speedup: float | None = field(default=None, metadata={"key": "speedup_vs_fp32"})
    speedup_interval: list[float] | None = None
    runtime_speedup: float | None = field(default=None, metadata={"key": "speedup_vs_runtime_fp32"})
    runtime_speedup_interval: list[float] | None = field(default=None,
                                                         metadata={"key": "speedup_vs_runtime_fp32_interval"})
    rounds: int | None = None
    busy: bool | None = None
    baseline_same_process: bool | None = None
    quality: Quality | None = None  # the headline metric, the last of `qualities`
    # Per-item results: the baseline module pairs them with fp32's, and they never reach report.json.
    items: dict[str, list[float]] = field(default_factory=dict, repr=False, compare=False,
                                          metadata={"transient": True})
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata=_INTERNAL)
    source_keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False, metadata=_INTERNAL)

    @classmethod
    def _read(cls, name: str, value: Any) -> Any:
        if name == "qualities":
            return [_quality(q) for q in value] if isinstance(value, list) else value
        return _quality(value) if name == "quality" else value

    def _write(self, name: str, value: Any) -> Any:
        if name == "qualities":
            return [_plain(q) for q in value] if isinstance(value, list) else value
        return _plain(value) if name == "quality" else value

    @property
    def p50(self) -> Any:
        return self.latency_ms.get("p50") if isinstance(self.latency_ms, dict) else None


@dataclass(frozen=True)
class Report(_Record):
    """A run's report: where and how it was measured, its rows, and what it recommends. Machine, model, plan, settings
    and the recommendation are free-form here (the renderers show their keys as they find them)."""
    schema: str | None = None  # REPORT_SCHEMA when written; None when a report lacks it
    version: str | None = field(default=None, metadata={"key": "qdeploy_version"})
    created: str | None = None
    machine: dict[str, Any] | None = None  # the one machine type, or the driver's with several
    machines: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    metrics: dict[str, str] | None = None
    variants: list[dict[str, Any]] | None = None
    skipped: list[dict[str, Any]] | None = None
    results: list[Row] = field(default_factory=list)
    recommendation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata=_INTERNAL)
    source_keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False, metadata=_INTERNAL)

    @classmethod
    def _read(cls, name: str, value: Any) -> Any:
        if name == "results":  # rows that are not objects never rendered; they are dropped here
            return [Row.from_dict(r) for r in value if isinstance(r, dict)] if isinstance(value, list) else []
        return value

    def _write(self, name: str, value: Any) -> Any:
        return [r.to_dict() for r in value] if name == "results" else value


def as_report(report: Report | dict[str, Any] | Any) -> Report:
    """A Report from a Report, today's JSON, or anything else (an empty report)."""
    if isinstance(report, Report):
        return report
    return Report.from_dict(report if isinstance(report, dict) else {})


__all__ = ["REPORT_SCHEMA", "Quality", "Report", "Row", "as_report", "replace"]
