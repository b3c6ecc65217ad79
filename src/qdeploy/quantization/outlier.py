"""Static int8 with float islands, for ONNX graphs: outlier-aware mixed precision and SmoothQuant.

`outlier` follows LLM.int8 (Dettmers et al. 2022): a Linear layer whose input carries channels beyond a threshold
(6.0 there) is where per-tensor int8 breaks, so that layer stays in float and the rest goes int8. The report's notes
name every layer kept and its largest activation. `smoothquant` instead moves the outliers into the weights
(see smoothquant.py) and quantizes every Linear layer.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact
from ..calibration.statistics import activation_absmax
from ..errors import ConfigError
from ..machine import has_vnni
from . import register
from .ort_methods import INT8_TYPES, MODEL_FILE, _check, embedding_gathers, run_static, weight_matmuls
from .smoothquant import smooth

RUNTIME_CONFIG = {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL"}}


def _types(reduce_range, activation_type):
    reduce = (not has_vnni()) if reduce_range is None else reduce_range
    return reduce, activation_type or ("qint8" if has_vnni() else "quint8")


@dataclass(frozen=True)
class StaticInt8:
    """The int8 scheme both recipes end with (None: chosen by the CPU's instruction set, as in ort-static)."""
    per_channel: bool = True
    reduce_range: bool | None = None
    activation_type: INT8_TYPES | None = None


@dataclass(frozen=True)
class Outlier(StaticInt8):
    threshold: float = 6.0  # max |activation| of a layer's input above which the layer stays float


@register("outlier", Outlier, "onnx", needs_calibration=True,
          description="outlier-aware mixed precision: Linear layers whose inputs exceed a threshold stay float, "
                      "the rest static int8")
def outlier(parent: Artifact, config: Outlier, calibration, target: Path, ctx):
    import onnx

    if config.threshold <= 0:
        raise ConfigError(f"outlier threshold must be positive, got {config.threshold}")
    nodes = _check(weight_matmuls(parent.model_path), parent)
    graph = onnx.load(str(parent.model_path), load_external_data=True)
    inputs = {n.name: n.input[0] for n in graph.graph.node if n.name in set(nodes)}
    ctx.progress(f"outlier: activation statistics on {calibration.samples} samples")
    absmax = activation_absmax(graph, sorted(set(inputs.values())),
                               calibration.batches(ctx.tokenizer, list(parent.manifest.inputs)))
    peaks = {node: float(absmax[inputs[node]].max()) for node in nodes}
    kept = sorted((n for n in nodes if peaks[n] > config.threshold), key=lambda n: -peaks[n])
    quantized = [n for n in nodes if n not in kept]
    reduce_range, activation = _types(config.reduce_range, config.activation_type)
    gathers = embedding_gathers(parent.model_path)
    ctx.progress(f"outlier: {len(kept)} of {len(nodes)} layers stay float (threshold {config.threshold})")
    if quantized:
        run_static(parent.model_path, target / MODEL_FILE, quantized, gathers, kept, calibration, ctx,
                   parent.manifest.inputs, "minmax", config.per_channel, reduce_range, activation, "qint8")
    else:
        onnx.save(graph, str(target / MODEL_FILE))
    notes = [f"threshold {config.threshold}: {len(kept)} of {len(nodes)} Linear layers kept in float, "
             f"{len(quantized)} int8"]
    notes += [f"float: {n} (max |input| {peaks[n]:.1f}, {int((absmax[inputs[n]] > config.threshold).sum())} "
              f"channels above)" for n in kept]
    return MODEL_FILE, "int8-mixed", dict(RUNTIME_CONFIG), notes


@dataclass(frozen=True)
class SmoothQuant(StaticInt8):
    alpha: float = 0.5  # migration strength: 0 keeps activations as they are, 1 moves all their range to weights


@register("smoothquant", SmoothQuant, "onnx", needs_calibration=True,
          description="SmoothQuant: per-channel scales move activation outliers into weights, then static int8 of "
                      "every Linear layer")
def smoothquant(parent: Artifact, config: SmoothQuant, calibration, target: Path, ctx):
    if not 0.0 <= config.alpha <= 1.0:
        raise ConfigError(f"smoothquant alpha must be within [0, 1], got {config.alpha}")
    nodes = _check(weight_matmuls(parent.model_path), parent)
    reduce_range, activation = _types(config.reduce_range, config.activation_type)
    with tempfile.TemporaryDirectory(prefix="qdeploy-sq-") as tmp:
        smoothed = Path(tmp) / "smoothed.onnx"
        ctx.progress(f"smoothquant: migrating activation ranges (alpha {config.alpha})")
        groups = smooth(parent.model_path, smoothed, calibration.batches(ctx.tokenizer, list(parent.manifest.inputs)),
                        config.alpha, nodes)
        run_static(smoothed, target / MODEL_FILE, weight_matmuls(smoothed), embedding_gathers(smoothed), [],
                   calibration, ctx, parent.manifest.inputs, "minmax", config.per_channel, reduce_range, activation,
                   "qint8")
    return MODEL_FILE, "int8", dict(RUNTIME_CONFIG), [
        f"alpha {config.alpha}: {groups} activation groups smoothed; all {len(nodes)} Linear layers int8"]
