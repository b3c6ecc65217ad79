"""Quality of a session against the fp32 PyTorch model: one module per metric, registered by name.

A metric takes a session and data and returns a value (and the raw outputs, so fidelity metrics can compare a variant
with the baseline's outputs on the same inputs). Leaves: nothing here knows how an artifact was made.
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


@dataclass(frozen=True)
class Metric:
    name: str
    tasks: tuple[str, ...]
    # (session, ctx, path or None) -> (value, raw outputs for ctx.reference)
    evaluate: Callable[..., tuple[float, Any]]
    needs_path: bool
    description: str
    scale: str = "unit"  # "unit" for 0..1 values, "points" for x100 scores
    read: Callable[[Path], Any] | None = None  # parses the data file; run before any long work to fail early
    higher_is_better: bool = True
    parses_path: bool = False  # the path is a spec (`SRC,REF:N`) that `read` checks itself, not one file


METRICS: Registry[Metric] = Registry("metric", ("qdeploy.evaluation.classification", "qdeploy.evaluation.embeddings",
                                                   "qdeploy.evaluation.language",
                                                   "qdeploy.evaluation.seq2seq_metrics"))


def register(name: str, tasks: tuple[str, ...], needs_path: bool, description: str, scale: str = "unit",
             read: Callable[[Path], Any] | None = None, higher_is_better: bool = True, parses_path: bool = False):
    def add(fn):
        METRICS.register(name)(Metric(name, tasks, fn, needs_path, description, scale, read, higher_is_better,
                                      parses_path))
        return fn

    return add


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
