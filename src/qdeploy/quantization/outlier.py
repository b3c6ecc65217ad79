"""Static int8 with float islands, and SmoothQuant, for ONNX graphs (ONNX Runtime) and OpenVINO models (NNCF).

`outlier` follows LLM.int8 (Dettmers et al. 2022): a Linear layer whose input carries channels beyond a threshold
(6.0 there) is where per-tensor int8 breaks, so that layer stays in float and the rest goes int8. The notes name
every layer kept and its largest activation. `smoothquant` instead moves the outliers into the weights
(smoothquant.py) and quantizes every Linear layer. Layer selection and migration are shared (linear_graph.py); only
the final int8 step differs: ONNX Runtime QDQ for ONNX, `nncf.quantize` for OpenVINO (`nncf-outlier`,
`nncf-smoothquant`: a method takes one input format, and the run picks its parent by that format).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from ..artifact import Artifact
from ..calibration.statistics import absmax
from ..errors import ConfigError, InputError
from ..machine import has_vnni
from . import register
from .linear_graph import LinearGraph, linear_graph
from .nncf_methods import RUNTIME_CONFIG as OPENVINO_RUNTIME, MODEL_FILE as OPENVINO_FILE, _quiet
from .ort_methods import INT8_TYPES, MODEL_FILE, embedding_gathers, ffn_down_matmuls, run_static, weight_matmuls
from .smoothquant import describe_alphas, migration_scales

ONNX_RUNTIME = {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL"}}


@dataclass(frozen=True)
class StaticInt8:
    """The ONNX Runtime int8 scheme both recipes end with (None: chosen by the CPU's instruction set)."""
    per_channel: bool = True
    reduce_range: bool | None = None
    activation_type: INT8_TYPES | None = None


def _onnx_int8(config: StaticInt8) -> Callable:
    def quantize(model_path: Path, kept_float: list[str], target: Path, calibration, ctx, parent) -> tuple[str, dict]:
        reduce = (not has_vnni()) if config.reduce_range is None else config.reduce_range
        activation = config.activation_type or ("qint8" if has_vnni() else "quint8")
        nodes = [n for n in weight_matmuls(model_path) if n not in set(kept_float)]
        run_static(model_path, target / MODEL_FILE, nodes, embedding_gathers(model_path), kept_float, calibration,
                   ctx, parent.manifest.inputs, "minmax", config.per_channel, reduce, activation, "qint8")
        return MODEL_FILE, dict(ONNX_RUNTIME)
    return quantize


@dataclass(frozen=True)
class NncfInt8:
    """The NNCF int8 scheme both OpenVINO recipes end with (transformer model type; NNCF's own SmoothQuant off)."""
    preset: Literal["performance", "mixed"] = "mixed"


def _openvino_int8(config: NncfInt8) -> Callable:
    def quantize(model_path: Path, kept_float: list[str], target: Path, calibration, ctx, parent) -> tuple[str, dict]:
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

        _quiet()
        # Alpha -1 turns NNCF's SmoothQuant off: the recipe decided the migration (or that there is none).
        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1))
        try:
            model = nncf.quantize(
                ov.Core().read_model(str(model_path)),
                calibration.nncf_dataset(ctx.tokenizer, list(parent.manifest.inputs), ctx.progress),
                preset=getattr(nncf.QuantizationPreset, config.preset.upper()), model_type=nncf.ModelType.TRANSFORMER,
                subset_size=calibration.batch_count(), advanced_parameters=advanced,
                ignored_scope=nncf.IgnoredScope(names=list(kept_float), validate=True) if kept_float else None)
        except nncf.ValidationError as exc:
            raise InputError(f"nncf: {str(exc).splitlines()[0]}") from None
        ov.save_model(model, str(target / OPENVINO_FILE), compress_to_fp16=False)
        return OPENVINO_FILE, dict(OPENVINO_RUNTIME)
    return quantize


def outlier_layers(graph: LinearGraph, batches, threshold: float):
    """The Linear layers whose input exceeds `threshold` somewhere, largest first, with their input's channel peaks."""
    if threshold <= 0:
        raise ConfigError(f"outlier threshold must be positive, got {threshold}")
    layers = graph.linears()
    peaks = absmax(graph.activations(sorted({layer.activation for layer in layers}), batches))
    largest = {layer.name: float(peaks[layer.activation].max()) for layer in layers}
    kept = sorted((layer for layer in layers if largest[layer.name] > threshold), key=lambda l: -largest[l.name])
    notes = [f"threshold {threshold}: {len(kept)} of {len(layers)} Linear layers kept in float, "
             f"{len(layers) - len(kept)} int8"]
    notes += [f"float: {layer.name} (max |input| {largest[layer.name]:.1f}, "
              f"{int((peaks[layer.activation] > threshold).sum())} channels above)" for layer in kept]
    return [layer.name for layer in kept], len(layers), notes


def _outlier(fmt: str, int8: Callable):
    def apply(parent: Artifact, config, calibration, target: Path, ctx):
        graph = linear_graph(fmt, parent.model_path)
        ctx.progress(f"outlier: activation statistics on {calibration.samples} samples")
        kept, total, notes = outlier_layers(graph, calibration.batches(ctx.tokenizer, list(parent.manifest.inputs)),
                                            config.threshold)
        ctx.progress(f"outlier: {len(kept)} of {total} layers stay float (threshold {config.threshold})")
        if len(kept) == total:  # nothing left to quantize: the float graph is the answer
            graph.save(target / (MODEL_FILE if fmt == "onnx" else OPENVINO_FILE))
            return (MODEL_FILE if fmt == "onnx" else OPENVINO_FILE), "int8-mixed", \
                dict(ONNX_RUNTIME if fmt == "onnx" else OPENVINO_RUNTIME), notes
        model_file, runtime_config = int8(config)(parent.model_path, kept, target, calibration, ctx, parent)
        return model_file, "int8-mixed", runtime_config, notes
    return apply


def _smoothquant(fmt: str, int8: Callable):
    def apply(parent: Artifact, config, calibration, target: Path, ctx):
        if config.alpha != "search" and not 0.0 <= config.alpha <= 1.0:
            raise ConfigError(f"smoothquant alpha must be within [0, 1] or search, got {config.alpha}")
        graph = linear_graph(fmt, parent.model_path)
        ctx.progress(f"smoothquant: migrating activation ranges (alpha {config.alpha})")
        scales, chosen = migration_scales(graph, calibration.batches(ctx.tokenizer, list(parent.manifest.inputs)),
                                          config.alpha)
        layers = sum(len(g) for g in graph.groups().values())
        per_group = describe_alphas(graph, chosen) if config.alpha == "search" else []
        graph.smooth(scales)
        # ONNX: the feed-forward down-projections stay float unless asked (see SmoothQuant.ffn_down_int8).
        kept = [] if getattr(config, "ffn_down_int8", True) else sorted(ffn_down_matmuls(parent.model_path))
        with tempfile.TemporaryDirectory(prefix="qdeploy-sq-") as tmp:
            smoothed = Path(tmp) / ("smoothed.onnx" if fmt == "onnx" else "smoothed.xml")
            graph.save(smoothed)
            model_file, runtime_config = int8(config)(smoothed, kept, target, calibration, ctx, parent)
        values = sorted(set(chosen.values()))
        notes = [f"alpha {config.alpha}" + (f" (per group: {', '.join(f'{a:g}' for a in values)}; median "
                                             f"{float(np.median(list(chosen.values()))):g})" if config.alpha == "search"
                                            else "") + f": {len(scales)} activation groups smoothed; "
                 + (f"all {layers} Linear layers int8" if not kept else
                    f"{layers - len(kept)} of {layers} Linear layers int8, {len(kept)} feed-forward down-projections "
                    "float (ffn_down_int8=false)")]
        return model_file, "int8", runtime_config, notes + per_group
    return apply


ALPHA = float | Literal["search"]


@dataclass(frozen=True)
class Outlier(StaticInt8):
    threshold: float = 6.0  # max |activation| of a layer's input above which the layer stays float


@dataclass(frozen=True)
class SmoothQuant(StaticInt8):
    # Migration strength: 0 keeps activations as they are, 1 moves all their range to weights; "search" picks per
    # layer group from smoothquant.ALPHA_GRID on the calibration set.
    alpha: ALPHA = 0.5
    # The down-projection reads the activation function's output: int8 there costs all-MiniLM-L6-v2 2.1 STS points
    # even smoothed (79.8-79.9 vs 82.03), float there 0.2 (81.81). True gives every Linear layer int8 (W8A8).
    ffn_down_int8: bool = False


@dataclass(frozen=True)
class NncfOutlier(NncfInt8):
    threshold: float = 6.0


@dataclass(frozen=True)
class NncfSmoothQuant(NncfInt8):
    alpha: ALPHA = 0.5


OUTLIER_TEXT = "outlier-aware mixed precision: Linear layers whose inputs exceed a threshold stay float, the rest "
SMOOTH_TEXT = "SmoothQuant (alpha fixed or searched per layer): activation outliers moved into weights, then "
register("outlier", Outlier, "onnx", needs_calibration=True, description=OUTLIER_TEXT + "static int8")(
    _outlier("onnx", _onnx_int8))
register("smoothquant", SmoothQuant, "onnx", needs_calibration=True,
         description=SMOOTH_TEXT + "static int8 of the Linear layers (feed-forward down-projections float unless "
                                   "ffn_down_int8)")(_smoothquant("onnx", _onnx_int8))
register("nncf-outlier", NncfOutlier, "openvino", needs_calibration=True, description=OUTLIER_TEXT + "NNCF int8")(
    _outlier("openvino", _openvino_int8))
register("nncf-smoothquant", NncfSmoothQuant, "openvino", needs_calibration=True,
         description=SMOOTH_TEXT + "NNCF int8 of every Linear layer")(_smoothquant("openvino", _openvino_int8))
