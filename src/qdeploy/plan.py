"""The plan: what `qdeploy run` does. Every flag of `run` is one key here; the no-argument default is
plans/default.yaml.

Parsed into typed, frozen dataclasses; unknown keys and wrong types are errors; nothing in a plan is executed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .config import build, to_dict
from .errors import ConfigError, InputError

PLAN_SCHEMA = "qdeploy.plan/1"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    # The variant's name in the run (its artifact directory); lets one method appear with several options,
    # e.g. outlier at thresholds 5, 6 and 8. Defaults to the method's name.
    label: str | None = None
    # The parent's format, for a method written for several (smoothquant on onnx or openvino); None: its first.
    # A plan entry naming several formats becomes one spec per format, labelled VARIANT-FORMAT.
    format: str | None = None

    @property
    def variant(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class CalibrationSpec:
    source: str = "builtin"
    samples: int = 128
    seed: int = 0
    max_length: int = 128
    batch_size: int = 8


@dataclass(frozen=True)
class MachineSpec:
    """A machine type of a cluster: its benchmark and quality cells run only on nodes that have its resources."""
    name: str
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources, e.g. {"machine:intel-spr": 1}
    gpus: int = 0


@dataclass(frozen=True)
class Plan:
    model: str | None = None  # None: the built-in default, all-MiniLM-L6-v2
    task: str = "auto"  # auto: from the model's config.json (its architectures' head), printed and recorded
    drop_head: bool = False  # feature-extraction of a model with a task head: export the bare encoder on purpose
    methods: tuple[MethodSpec, ...] | None = None  # None (`methods: default`): the task's own (tasks.py)
    runtimes: tuple[str, ...] = ("auto",)  # "auto": every runtime available here; others are reported as not run
    batch_sizes: tuple[int, ...] = (1, 8)
    seq_len: int = 128
    calibration: CalibrationSpec = CalibrationSpec()
    eval: dict[str, str] = field(default_factory=dict)  # metric -> file
    out: str | None = None
    threads: int | None = None  # None: the physical core count
    warmup: int = 5
    min_reps: int = 20
    min_time_s: float = 2.0
    # Speed-ups: the baseline and every variant timed alternately in this many rounds (ratio per round; median and
    # its 95 % interval over rounds)
    rounds: int = 15
    strict_timing: bool = False  # a measurement on a busy machine is an error instead of a marked row
    keep_going: bool = False  # a run whose every requested method or runtime failed still exits 0 (failures listed)
    # metric -> the largest loss that still qualifies a variant, in the metric's own units (accuracy 0.01 = 1 point;
    # perplexity a fraction of fp32's; cosine the floor); unnamed metrics keep their defaults (`qdeploy list`)
    tolerance: dict[str, float] = field(default_factory=dict)
    throughput_streams: int = 0  # > 0: also measure throughput with this many concurrent streams
    new_tokens: int = 64  # generative tasks: tokens decoded per request in the generation benchmark
    # model: tokenized inputs, model only (speed-ups use it); end-to-end: tokenization of the texts inside the timing
    timing: tuple[Literal["model", "end-to-end"], ...] = ("model",)
    allow_pickle: bool = False
    trust_remote_code: bool = False
    executor: Literal["local", "ray"] = "local"  # ray: cells run as Ray tasks (pip install qdeploy[ray])
    address: str | None = None  # ray: the cluster to join (e.g. ray://head:10001 or head:6379); None starts a local one
    storage: str | None = None  # where artifacts go: a path or fsspec URI every node reaches; None: OUT/artifacts
    retries: int = 2  # ray: times a cell is retried when its worker or node is lost
    machines: tuple[MachineSpec, ...] = ()  # none: the one machine the run is on

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        data["methods"] = DEFAULT_METHODS if self.methods is None else [
            {"name": m.name, "options": dict(m.options), **({"label": m.label} if m.label else {}),
             **({"format": m.format} if m.format else {})} for m in self.methods]
        data["calibration"] = to_dict(self.calibration)
        data["eval"] = dict(self.eval)
        data["tolerance"] = dict(self.tolerance)
        data["machines"] = [{"name": m.name, "resources": dict(m.resources), "gpus": m.gpus} for m in self.machines]
        return {"schema": PLAN_SCHEMA, **data}


DEFAULT_METHODS = "default"  # a plan's `methods: default`: the task's default methods


def method_specs(raw: Any) -> tuple[MethodSpec, ...] | None:
    """A plan's `methods` entry as specs; None for `default` (resolved once the task is known)."""
    if raw == DEFAULT_METHODS:
        return None
    if isinstance(raw, str):
        raw = [m for m in raw.split(",") if m.strip()]
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"plan.methods must be a list, got {raw!r}")
    specs = []
    for item in raw:
        if isinstance(item, str):
            specs.append(MethodSpec(item.strip()))
        elif isinstance(item, dict):
            unknown = set(item) - {"name", "options", "label", "format"}
            if unknown or "name" not in item or not isinstance(item["name"], str):
                raise ConfigError("plan.methods entries are a name or {name, options, label, format}; "
                                  f"got keys {sorted(map(str, item))}")
            label = item.get("label")
            if label is not None and not (isinstance(label, str) and _LABEL.fullmatch(label)):
                raise ConfigError(f"plan.methods[{item['name']}].label {label!r} must be letters, digits, '.', '_' "
                                  "or '-' (it names a directory)")
            options = item.get("options") or {}
            if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
                raise ConfigError(f"plan.methods[{item['name']}].options must be a mapping")
            formats = item.get("format")
            formats = [formats] if formats is None or isinstance(formats, str) else formats
            if not (isinstance(formats, list) and formats and all(f is None or isinstance(f, str) for f in formats)):
                raise ConfigError(f"plan.methods[{item['name']}].format must be a format name or a list of them")
            for fmt in formats:
                own = f"{label or item['name']}-{fmt}" if len(formats) > 1 else label
                specs.append(MethodSpec(str(item["name"]), dict(options), own, fmt))
        else:
            raise ConfigError(f"plan.methods entry {item!r} must be a name or a mapping")
    variants = [spec.variant for spec in specs]
    repeated = sorted({v for v in variants if variants.count(v) > 1})
    if repeated:
        raise ConfigError(f"plan.methods names variant(s) {', '.join(repeated)} more than once; give each a "
                          "distinct label")
    return tuple(specs)


def _machine_specs(raw: Any, where: str) -> tuple[MachineSpec, ...]:
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{where}.machines must be a list of {{name, resources, gpus}}, got {raw!r}")
    specs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}.machines[{i}] must be a mapping {{name, resources, gpus}}, got {item!r}")
        resources = item.get("resources") or {}
        if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for k, v in resources.items()):
            raise ConfigError(f"{where}.machines[{i}].resources must map resource names to positive numbers")
        spec = build(MachineSpec, {k: v for k, v in item.items() if k != "resources"}, f"{where}.machines[{i}]")
        if not _LABEL.fullmatch(spec.name):
            raise ConfigError(f"{where}.machines[{i}].name {spec.name!r} must be letters, digits, '.', '_' or '-'")
        if spec.gpus < 0:
            raise ConfigError(f"{where}.machines[{i}].gpus must be >= 0")
        specs.append(replace(spec, resources={k: float(v) for k, v in resources.items()}))
    names = [m.name for m in specs]
    if len(set(names)) < len(names):
        raise ConfigError(f"{where}.machines names a machine type more than once: {names}")
    return tuple(specs)


def from_dict(data: dict[str, Any], where: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of plan keys")
    data = dict(data)
    schema = data.pop("schema", PLAN_SCHEMA)
    if schema != PLAN_SCHEMA:
        raise ConfigError(f"{where}: schema {schema!r} is not {PLAN_SCHEMA!r}")
    methods = method_specs(data.pop("methods", []))
    calibration = build(CalibrationSpec, data.pop("calibration", None), f"{where}.calibration")
    evals = data.pop("eval", None) or {}
    if not isinstance(evals, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in evals.items()):
        raise ConfigError(f"{where}.eval must map metric names to file paths")
    machines = _machine_specs(data.pop("machines", None) or [], where)
    tolerance = data.pop("tolerance", None) or {}
    if not isinstance(tolerance, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in tolerance.items()):
        raise ConfigError(f"{where}.tolerance must map metric names to non-negative numbers (e.g. accuracy: 0.01)")
    plan = build(Plan, data, where)
    if plan.retries < 0:
        raise ConfigError(f"{where}.retries must be >= 0")
    if plan.address and plan.executor != "ray":
        raise ConfigError(f"{where}: address {plan.address!r} is for the ray executor; add executor: ray")
    if plan.rounds < 6:
        raise ConfigError(f"{where}.rounds must be >= 6 (a 95 % interval of the median ratio needs 6 rounds)")
    return replace(plan, methods=methods, calibration=calibration, eval=dict(evals), machines=machines,
                   tolerance={k: float(v) for k, v in tolerance.items()})


def load(path: str | Path) -> Plan:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"plan file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # safe_load: a plan can never construct objects
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"plan file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return from_dict(data or {}, where=str(path))


def default() -> Plan:
    return load(Path(str(resources.files("qdeploy") / "plans" / "default.yaml")))
