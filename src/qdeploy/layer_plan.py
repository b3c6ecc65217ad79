"""The layer plan: what was done to each weight-bearing layer of a model, typed, as `layers.json` in an artifact.

A layer is named by the PyTorch module it came from (`model.layers.0.self_attn.q_proj`), so that the plans of an ONNX
and an OpenVINO artifact of the same model read the same and can be compared line by line. This module holds the
types, their JSON form and how they are shown (`summary`, `differences`); layer_plan_graph.py reads a plan from a
written graph. Named apart from the run plan of `qdeploy run --plan` (plan.py).

A plan records what the written graph does, never what a method meant to do: `why` says how a backend realised a
scheme ("activations int8 per block of 32 at run time: ONNX Runtime accuracy_level 4") or why a layer stayed float.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, InputError

SCHEMA = 1
LAYERS_FILE = "layers.json"
WEIGHTS = ("int8", "int4", "fp8-e4m3", "fp8-e5m2", "float")
ACTIVATIONS = ("float", "int8-static", "int8-dynamic", "int8-dynamic-block", "fp8-e4m3", "fp8-e5m2")
GRANULARITIES = ("per-tensor", "per-channel", "block")


@dataclass(frozen=True)
class LayerScheme:
    weights: str  # one of WEIGHTS; "float" is a layer whose weights were left as exported
    activations: str = "float"  # one of ACTIVATIONS
    granularity: str | None = None  # of the weight scales: one of GRANULARITIES (None: float weights)
    block_size: int | None = None  # weights sharing one scale, when granularity is "block"
    symmetric: bool | None = None  # weight zero points all zero (None: float weights, or not readable)
    why: str = ""  # why a layer is float, or how the backend realises its scheme

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise ConfigError(f"weights {self.weights!r}: not one of {', '.join(WEIGHTS)}")
        if self.activations not in ACTIVATIONS:
            raise ConfigError(f"activations {self.activations!r}: not one of {', '.join(ACTIVATIONS)}")
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity {self.granularity!r}: not one of {', '.join(GRANULARITIES)}")
        if self.block_size is not None and (not isinstance(self.block_size, int) or self.block_size < 1):
            raise ConfigError(f"block_size {self.block_size!r}: a positive integer or null")

    @property
    def quantized(self) -> bool:
        """Weights quantized: a float layer whose input a QDQ graph rounds for a quantized sibling stays float."""
        return self.weights != "float"

    @property
    def grain(self) -> str:
        """The weight granularity in a few characters: "per-channel", "block 32"."""
        if self.granularity == "block" and self.block_size:
            return f"block {self.block_size}"
        return self.granularity or ""

    def short(self) -> str:
        """w8 per-channel / a float: the scheme without its reason, as a summary shows it."""
        bits = {"int8": "w8", "int4": "w4", "float": "w float"}.get(self.weights, f"w {self.weights}")
        return f"{bits}{' ' + self.grain if self.grain else ''} / a {self.activations}"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"weights": self.weights, "activations": self.activations}
        for key in ("granularity", "block_size", "symmetric"):
            if getattr(self, key) is not None:  # absent rather than null: the file stays short to read and edit
                data[key] = getattr(self, key)
        data["why"] = self.why
        return data


@dataclass(frozen=True)
class LayerPlan:
    method: str
    format: str  # the artifact's format: the backend that wrote the graph
    layers: Mapping[str, LayerScheme] = field(default_factory=dict)
    transforms: tuple[str, ...] = ()  # graph-wide changes: embedding tables, fused kernels, smoothing scales
    schema: int = SCHEMA

    @property
    def quantized(self) -> list[str]:
        return [name for name, scheme in self.layers.items() if scheme.quantized]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "method": self.method, "format": self.format,
                "transforms": list(self.transforms),
                "layers": {name: scheme.to_dict() for name, scheme in self.layers.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = LAYERS_FILE) -> "LayerPlan":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{where} is not valid JSON ({exc})") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: Any, where: str = LAYERS_FILE) -> "LayerPlan":
        if not isinstance(data, dict):
            raise InputError(f"{where}: a layer plan is a JSON object, not {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise InputError(f"{where}: layer plan schema {data.get('schema')!r} is not one this qdeploy reads "
                             f"({SCHEMA}); a newer qdeploy wrote it, or it is not a layer plan")
        unknown = set(data) - {"schema", "method", "format", "transforms", "layers"}
        layers = data.get("layers")
        if unknown or not isinstance(layers, dict) or not isinstance(data.get("transforms", []), list):
            raise InputError(f"{where}: malformed layer plan" + (f" (unknown keys {sorted(unknown)})" if unknown
                                                                 else " (layers must be an object by layer name)"))
        schemes = {}
        for name, entry in layers.items():
            try:
                if not isinstance(entry, dict):
                    raise TypeError(f"a layer is an object, not {type(entry).__name__}")
                schemes[name] = LayerScheme(**entry)
            except (TypeError, ConfigError) as exc:
                raise InputError(f"{where}: layer {name}: {exc}") from None
        return cls(str(data.get("method", "")), str(data.get("format", "")), schemes,
                   tuple(str(t) for t in data.get("transforms", [])))

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "LayerPlan":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"layer plan {path} is missing")
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))

    def dominant(self) -> LayerScheme | None:
        """The scheme most quantized layers share (its reason left aside), or None when nothing is quantized."""
        counts = Counter(_key(s) for s in self.layers.values() if s.quantized)
        if not counts:
            return None
        return next(s for s in self.layers.values() if s.quantized and _key(s) == counts.most_common(1)[0][0])

    def summary(self) -> str:
        """One line: the dominant scheme, how many layers have it quantized, and the exceptions by name pattern.
        E.g. "w8 per-channel / a float, 35/36 layers quantized; w float / a float: lm_head"."""
        total = len(self.layers)
        main = self.dominant()
        if main is None:
            return f"all {total} layers float" if total else "no weight-bearing layer found"
        line = f"{main.short()}, {len(self.quantized)}/{total} layers quantized"
        others: dict[str, list[str]] = defaultdict(list)
        for name, scheme in self.layers.items():
            if _key(scheme) != _key(main):
                others[scheme.short()].append(name)
        for text, names in sorted(others.items(), key=lambda item: -len(item[1])):
            line += f"; {text}: {_patterns(names)}"
        return line

    def differences(self, other: "LayerPlan") -> list[str]:
        """How `other` differs, one short line per field and pair of values: "activations int8-dynamic-block vs
        float on 36 layers". Empty when both plans do the same to the same layers."""
        lines = []
        counts: Counter = Counter()
        for name in self.layers.keys() & other.layers.keys():
            mine, theirs = self.layers[name], other.layers[name]
            fields = [("weights", mine.weights, theirs.weights), ("activations", mine.activations, theirs.activations)]
            if "float" not in (mine.weights, theirs.weights):  # a float layer's missing scales are no difference
                fields += [("granularity", mine.grain, theirs.grain), ("symmetric", mine.symmetric, theirs.symmetric)]
            for label, a, b in fields:
                if a != b:
                    counts[(label, _text(a), _text(b))] += 1
        order = ["weights", "activations", "granularity", "symmetric"]
        for (label, a, b), count in sorted(counts.items(), key=lambda item: (-item[1], order.index(item[0][0]),
                                                                             item[0])):
            lines.append(f"{label} {a} vs {b} on {count} layer{'s' if count > 1 else ''}")
        for names, where in ((self.layers.keys() - other.layers.keys(), "only in the first"),
                             (other.layers.keys() - self.layers.keys(), "only in the second")):
            if names:
                lines.append(f"{len(names)} layer{'s' if len(names) > 1 else ''} {where}: {_patterns(names)}")
        if set(self.transforms) != set(other.transforms):
            lines.append(f"transforms {_gist(self.transforms)} vs {_gist(other.transforms)}")
        return lines


def in_order(layers: dict[str, LayerScheme]) -> dict[str, LayerScheme]:
    """Layers by name with block numbers compared as numbers (layers.2 before layers.10): the same order whatever
    order a backend's graph lists its nodes in, so that two formats' layers.json compare line by line."""
    return dict(sorted(layers.items(), key=lambda item: [int(p) if p.isdigit() else p
                                                         for p in re.split(r"(\d+)", item[0])]))


def _key(scheme: LayerScheme) -> tuple:
    return scheme.weights, scheme.activations, scheme.grain


def _text(value) -> str:
    return "none" if value in (None, "") else str(value).lower()


def _gist(transforms) -> str:
    """Each transform up to its details (what comes after a colon or a parenthesis): short enough for one line."""
    return "; ".join(re.split(r" \(|: ", t)[0] for t in transforms) or "none"


def _patterns(names, limit: int = 3) -> str:
    """Layer names with their block numbers folded (model.layers.*.mlp.down_proj x5), at most `limit` of them."""
    folded = Counter(re.sub(r"\.\d+\.", ".*.", name) for name in sorted(names))
    alone = {re.sub(r"\.\d+\.", ".*.", name): name for name in names}  # a pattern of one reads as its name
    shown = [f"{pattern} x{count}" if count > 1 else alone[pattern] for pattern, count in folded.most_common(limit)]
    return ", ".join(shown) + (f" and {len(folded) - limit} more" if len(folded) > limit else "")


def mark_differences(variants: list[dict[str, Any]]) -> None:
    """Where variants made by one method (report.json's `variants`, each with the `layer_plan` it carried) did
    different things, give each later one a `plan_differences` line saying how it differs from the first: the
    renderers show it without reading plans themselves."""
    plans: dict[str, LayerPlan] = {}
    methods: dict[str, list[str]] = defaultdict(list)
    for record in variants:
        if isinstance(record.get("layer_plan"), dict):
            plans[record["name"]] = plan = LayerPlan.from_dict(record["layer_plan"], f"variant {record['name']}")
            methods[str(record.get("method") or plan.method)].append(record["name"])
    for record in variants:
        names = methods.get(str(record.get("method")), [])
        if record["name"] in names[1:]:
            first = names[0]
            found = plans[first].differences(plans[record["name"]])
            if found:
                record["plan_differences"] = (f"vs {first} ({plans[first].format}): " + "; ".join(found[:3])
                                              + (f"; {len(found) - 3} more" if len(found) > 3 else ""))


def read_plan(directory: Path, manifest) -> LayerPlan | None:
    """The plan an artifact's manifest points to, or None when it has none (an fp32 export, an fp16 artifact, or
    one written before plans travelled)."""
    if not getattr(manifest, "layer_plan", None):
        return None
    from .artifact import safe_join

    return LayerPlan.load(safe_join(Path(directory), manifest.layer_plan))
