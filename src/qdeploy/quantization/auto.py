"""Accuracy-aware fallback: static int8 everywhere, then the most sensitive layers back to float, a group at a time,
until the measured quality loss is within the tolerance (as Intel's int8 BART keeps 40 of 193 Linear layers float).

Layers are ranked by simulated SQNR (sensitivity.py); each candidate is really quantized and really evaluated on the
user's data with the registered metric. Stops at the first candidate within tolerance, or with the best one found when
the candidates or the time budget run out, and says so in the notes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from ..artifact import Artifact, Manifest
from ..errors import ConfigError
from ..machine import has_vnni
from . import MethodResult, register
from .backends import INT8_TYPES
from .backends.onnx import MODEL_FILE, ONNX, run_static
from .backends.onnx_graph import embedding_gathers, weight_matmuls
from .ort_methods import _check
from .sensitivity import layer_sqnr

@dataclass(frozen=True)
class AccuracyTarget:
    """What an accuracy-aware method aims at (auto and nncf-auto): checked when the config is made, before exports."""
    NAME: ClassVar[str] = "auto"
    eval: str = ""  # evaluation data for the metric (required)
    metric: str = ""  # default: accuracy for text-classification, stsb for feature-extraction
    tolerance: float = 0.01  # the largest quality loss accepted, in the metric's units (0.01 = one accuracy point)
    relative: bool = False  # tolerance as a fraction of the fp32 value instead

    def __post_init__(self):
        if not self.eval:
            raise ConfigError(f"{self.NAME} needs evaluation data: --option eval=PATH (the metric's file)")
        if self.metric:
            from .. import evaluation

            evaluation.metric(self.metric)  # an unknown name is a ConfigError naming the known ones


@dataclass(frozen=True)
class Auto(AccuracyTarget):
    mode: Literal["static", "dynamic"] = "static"  # the int8 scheme of the layers that stay quantized
    time_budget_s: float = 900.0
    per_channel: bool = True
    reduce_range: bool | None = None
    activation_type: INT8_TYPES | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.time_budget_s <= 0:
            raise ConfigError(f"auto time_budget_s must be positive, got {self.time_budget_s}")


DEFAULT_METRIC = {"text-classification": "accuracy", "feature-extraction": "stsb"}


def evaluation_target(parent: Artifact, metric_name: str, eval_path: str, method: str):
    """The metric and its data file for an accuracy-aware method, checked before any quantization starts."""
    from .. import evaluation

    metric_name = metric_name or DEFAULT_METRIC.get(parent.manifest.task, "")
    metric = evaluation.metric(metric_name)
    if parent.manifest.task not in metric.tasks:
        raise ConfigError(f"{method}: metric {metric_name} does not apply to task {parent.manifest.task}")
    if not eval_path:
        raise ConfigError(f"{method} needs evaluation data: --option eval=PATH (the metric's file)")
    data = evaluation.check_path(eval_path, metric_name)
    if metric.read:
        metric.read(data)
    return metric_name, metric, data


def _candidates(count: int) -> list[int]:
    """How many layers to keep float at each step: 0, 1, 2, 4, 8, ... then all but none."""
    steps, k = [0], 1
    while k < count:
        steps.append(k)
        k *= 2
    return steps + [count]


@register("auto", Auto, "onnx", needs_calibration=True,
          description="accuracy-aware fallback: static int8, then the most sensitive layers back to float until the "
                      "quality loss is within a tolerance (needs eval=PATH)")
def auto(parent: Artifact, config: Auto, calibration, target: Path, ctx):
    from .. import evaluation, runtimes

    metric_name, metric, data = evaluation_target(parent, config.metric, config.eval, "auto")
    eval_ctx = evaluation.EvalContext(ctx.tokenizer, list(parent.manifest.inputs))

    def score(model_path: Path) -> float:
        manifest = Manifest(format="onnx", model_file=model_path.name, precision="int8", task=parent.manifest.task,
                            source=parent.manifest.source, runtime_config=ONNX.runtime_config(),
                            inputs=list(parent.manifest.inputs), outputs=list(parent.manifest.outputs))
        session = runtimes.load(Artifact(model_path.parent, manifest), "ort-cpu")
        return metric.evaluate(session, eval_ctx, data).value

    started = time.monotonic()
    reference = score(parent.model_path)
    sign = 1.0 if metric.higher_is_better else -1.0  # a loss is positive whichever way the metric points
    allowed = config.tolerance * (abs(reference) if config.relative else 1.0)
    nodes = _check(weight_matmuls(parent.model_path), parent)
    ctx.progress(f"auto: ranking {len(nodes)} layers by int8 sensitivity")
    sqnr = layer_sqnr(parent.model_path, nodes, list(calibration.batches(ctx.tokenizer, list(parent.manifest.inputs)))[:4])
    ranked = sorted(nodes, key=lambda n: sqnr[n])
    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    activation = config.activation_type or ("qint8" if has_vnni() else "quint8")
    gathers = embedding_gathers(parent.model_path)
    tried: list[tuple[int, float]] = []
    best: tuple[float, int, Path] | None = None
    with tempfile.TemporaryDirectory(prefix="qdeploy-auto-") as tmp:
        def trial(k: int) -> tuple[int, float, Path]:
            """Quantize with the k most sensitive layers float, and score it (a task of its own on a Ray worker)."""
            floats, quantized = ranked[:k], ranked[k:]
            candidate = Path(tmp) / f"k{k}" / MODEL_FILE
            (candidate.parent / "fp32").mkdir(parents=True)
            # ONNX Runtime's quantizers write shape-inferred copies beside their input: each trial reads its own copy
            # of the graph, so trials running side by side never overwrite each other's.
            for path in parent.model_path.parent.iterdir():
                if path.suffix in (".onnx", ".data"):
                    shutil.copy2(path, candidate.parent / "fp32" / path.name)
            source = candidate.parent / "fp32" / parent.model_path.name
            if quantized and config.mode == "dynamic":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(source), str(candidate), per_channel=config.per_channel,
                                 reduce_range=reduce_range, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gather"], nodes_to_quantize=quantized + gathers)
            elif quantized:
                run_static(source, candidate, quantized, gathers, floats, calibration, ctx,
                           parent.manifest.inputs, "minmax", config.per_channel, reduce_range, activation, "qint8")
            else:
                shutil.copy2(source, candidate)
            return k, score(candidate), candidate

        # One candidate at a time, stopping at the first within tolerance; on a Ray worker, a wave of candidates runs
        # as parallel tasks on its node and the fewest float layers within tolerance in the wave wins.
        candidates = _candidates(len(ranked))
        width = max(2, os.cpu_count() or 2) if ctx.parallel else 1
        for start in range(0, len(candidates), width):
            if tried and time.monotonic() - started > config.time_budget_s:
                break
            for k, value, candidate in ctx.map(trial, candidates[start:start + width]):
                loss = sign * (reference - value)
                tried.append((k, value))
                ctx.progress(f"auto: {k} layers float -> {metric_name} {value:.4f} (loss {loss:+.4f})")
                # a wave is in order of k: its first candidate within tolerance has the fewest float layers
                if best is None or (best[0] > allowed and (loss < best[0] or loss <= allowed)):
                    best = (loss, k, candidate)
            if best[0] <= allowed:
                break
        loss, k, chosen = best
        shutil.copy2(chosen, target / MODEL_FILE)
    met = loss <= allowed
    notes = [(f"tolerance {config.tolerance} met" if met else f"tolerance {config.tolerance} NOT met; best found") +
             f": {metric_name} {reference - sign * loss:.4f} vs fp32 {reference:.4f} with {k} of {len(ranked)} Linear "
             f"layers in float ({config.mode} int8 for the rest)",
             "tried (layers float -> value): " + ", ".join(f"{n} -> {v:.4f}" for n, v in tried)]
    if width > 1:
        notes.append(f"candidates evaluated {width} at a time as parallel Ray tasks on one node")
    notes += [f"float: {n} (SQNR {sqnr[n]:.1f} dB)" for n in ranked[:k]]
    return MethodResult(MODEL_FILE, "int8-mixed", ONNX.runtime_config(), notes)
