"""Quality of a session against the fp32 PyTorch model: one module per metric, registered by name.

A metric takes a session and data and returns a `Score`: the value, the per-item statistics it was aggregated from
(so that stats.py can put an interval on it and pair it item by item with the fp32 baseline's), and the raw outputs
(so fidelity metrics can compare a variant with the baseline's outputs on the same inputs). Leaves: nothing here
knows how an artifact was made.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..registry import Registry
from ..textdata import builtin_path


@dataclass
class EvalContext:
    tokenizer: Any
    input_names: list[str]
    batch_size: int = 32
    max_length: int = 128
    max_positions: int | None = None  # the model's context length (language-model windows)
    reference: dict[str, Any] = field(default_factory=dict)  # metric name -> the fp32 baseline's raw outputs
    vocabulary: int = 0  # a language model's logits width, learned from its first call (which runs one row)


@dataclass
class Score:
    value: float
    items: np.ndarray | None = None  # (n, k) float64 per-item statistics; metric.aggregate(items) reproduces value
    raw: Any = None  # outputs a fidelity metric stores as the fp32 reference


@dataclass(frozen=True)
class Tolerance:
    """The quality loss a variant may show against fp32 and still qualify."""
    # "absolute" (in the metric's own units), "relative" (a fraction of the fp32 value), "floor" (value >= amount)
    kind: str
    amount: float
    # How describe() reads an absolute amount: "unit" (of a 0..1 metric: x100, in points), "points", a unit's name
    # ("nats"), or "" for the bare number. To change only the amount of a metric's tolerance, keep its unit:
    # dataclasses.replace(metric.tolerance, amount=...).
    unit: str = ""

    def describe(self) -> str:
        if self.kind == "relative":
            return f"{self.amount * 100:g} % relative"
        if self.kind == "floor":
            return f">= {self.amount:g}"
        if self.unit in ("unit", "points"):
            points = self.amount * (100 if self.unit == "unit" else 1)
            return f"{points:g} point{'' if abs(points) <= 1 else 's'}"
        return f"{self.amount:g} {self.unit}".rstrip()


# Aggregates take items (n, k) and return the value; they also take a stack (r, n, k) and return r values, which is
# what keeps 2,000 bootstrap resamples fast (stats.py falls back to a loop for an aggregate that does not).
def mean(items: np.ndarray):
    """The mean of one column of per-item values (0/1 correctness, a cosine, an F-measure)."""
    return items[..., 0].mean(axis=-1)


def ratio(items: np.ndarray):
    """Sum of the first column over sum of the second: matches over positions, pooled over the items."""
    return items[..., 0].sum(axis=-1) / items[..., 1].sum(axis=-1)


ACCURACY = Tolerance("absolute", 0.01, "unit")  # one point on a 0..1 scale


@dataclass(frozen=True)
class Metric:
    name: str
    tasks: tuple[str, ...]
    # (session, ctx, path or None) -> Score
    evaluate: Callable[..., Score]
    needs_path: bool
    description: str
    scale: str = "unit"  # "unit" for 0..1 values, "points" for x100 scores, "raw" for others (perplexity, nats)
    read: Callable[[Path], Any] | None = None  # parses the data file; run before any long work to fail early
    higher_is_better: bool = True
    parses_path: bool = False  # the path is a spec (`SRC,REF:N`) that `read` checks itself, not one file
    aggregate: Callable[[np.ndarray], float] | None = None  # Score.items -> Score.value
    binary: bool = False  # items are one 0/1 column of per-item correctness: exact McNemar applies
    tolerance: Tolerance = ACCURACY


METRICS: Registry[Metric] = Registry("metric", ("qdeploy.evaluation.classification", "qdeploy.evaluation.embeddings",
                                                   "qdeploy.evaluation.language",
                                                   "qdeploy.evaluation.seq2seq_metrics"))


def register(name: str, tasks: tuple[str, ...], needs_path: bool, description: str, scale: str = "unit",
             read: Callable[[Path], Any] | None = None, higher_is_better: bool = True, parses_path: bool = False,
             aggregate: Callable[[np.ndarray], float] | None = None, binary: bool = False,
             tolerance: Tolerance | None = None):
    if tolerance is None:  # a point either way: 0.01 of a 0..1 metric, 1.0 of an x100 one
        tolerance = Tolerance("absolute", 1.0, "points") if scale == "points" else ACCURACY

    def add(fn):
        METRICS.register(name)(Metric(name, tasks, fn, needs_path, description, scale, read, higher_is_better,
                                      parses_path, aggregate, binary, tolerance))
        return fn

    return add


def scored(aggregate: Callable[[np.ndarray], float], items, raw: Any = None) -> Score:
    """A Score whose value is `aggregate(items)`, so that the value and its items always agree."""
    items = np.asarray(items, dtype=np.float64)
    items = items.reshape(len(items), -1)
    return Score(float(aggregate(items)), items, raw)


def metric(name: str) -> Metric:
    return METRICS.get(name)


def names() -> list[str]:
    return METRICS.names()


def heldout_texts() -> list[str]:
    return builtin_path("heldout.txt").read_text(encoding="utf-8").splitlines()


def encode(texts: list[str], ctx: EvalContext) -> Iterator[dict[str, np.ndarray]]:
    # Lengths padded to a multiple of 16: runtimes with dynamic shapes (OpenVINO) prepare kernels per shape.
    for start in range(0, len(texts), ctx.batch_size):
        enc = ctx.tokenizer(texts[start:start + ctx.batch_size], padding=True, truncation=True, pad_to_multiple_of=16,
                            max_length=ctx.max_length, return_tensors="np")
        yield {name: enc[name].astype(np.int64) for name in ctx.input_names}


def per_text(session, texts: list[str], ctx: EvalContext,
             extract: Callable[[dict, dict], np.ndarray]) -> np.ndarray:
    """`extract(inputs, outputs)` for every text, in the original order; texts are batched by length so that short
    ones are not padded to long ones (the model's outputs for a text do not depend on its batch-mates)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results = [extract(batch, session.run(batch)) for batch in encode([texts[i] for i in order], ctx)]
    stacked = np.concatenate(results)
    out = np.empty_like(stacked)
    out[order] = stacked
    return out


def check_path(path: str | Path | None, name: str) -> Path:
    from ..errors import ConfigError, InputError

    if not path:
        raise ConfigError(f"metric {name} needs a file: --eval {name}=PATH")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"evaluation file for {name} does not exist: {path}")
    return path
