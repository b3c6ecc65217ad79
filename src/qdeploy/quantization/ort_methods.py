"""ONNX Runtime int8: dynamic (weights int8, activations quantized on the fly) and static QDQ (calibrated)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..artifact import Artifact
from ..errors import ConfigError, InputError, QdeployError
from ..machine import has_vnni
from . import MethodResult, register
from .backends.onnx import MODEL_FILE, ONNX, qtype as _qtype, run_static
from .backends import INT8_TYPES
from .backends.onnx_graph import embedding_gathers, ffn_matmuls, weight_matmuls


def _check(nodes: list[str], parent: Artifact) -> list[str]:
    if not nodes:
        raise QdeployError(f"{parent.directory}: no MatMul with a constant weight found; nothing to quantize")
    return nodes


def _onnx_error(exc: Exception, parent: Artifact) -> QdeployError:
    return InputError(f"ONNX Runtime could not quantize {parent.model_path}: {str(exc).splitlines()[0]}")


@dataclass(frozen=True)
class OrtDynamic:
    per_channel: bool = True
    # None: decided by the CPU. Without VNNI, u8s8 products can saturate 16-bit accumulators: 7-bit weights avoid it.
    reduce_range: bool | None = None
    weight_type: INT8_TYPES = "qint8"
    weight_matmuls_only: bool = True
    embeddings_int8: bool = True


@register("ort-dynamic", OrtDynamic, "onnx",
          description="ONNX Runtime dynamic int8 (MatMul weights int8, activations at run time)")
def ort_dynamic(parent: Artifact, config: OrtDynamic, calibration, target: Path, ctx):
    from onnxruntime.quantization import quantize_dynamic

    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    nodes = _check(weight_matmuls(parent.model_path), parent) if config.weight_matmuls_only else None
    gathers = embedding_gathers(parent.model_path) if config.embeddings_int8 else []
    ctx.progress("ort-dynamic: quantizing weights")
    try:
        quantize_dynamic(str(parent.model_path), str(target / MODEL_FILE), per_channel=config.per_channel,
                         reduce_range=reduce_range, weight_type=_qtype(config.weight_type),
                         op_types_to_quantize=["MatMul"] + (["Gather"] if gathers else []),
                         nodes_to_quantize=nodes + gathers if nodes is not None else None)
    except Exception as exc:  # ORT raises bare Exceptions for bad graphs
        raise _onnx_error(exc, parent) from exc
    notes = [f"reduce_range={reduce_range} ({'CPU has VNNI' if has_vnni() else 'CPU lacks VNNI'})",
             f"{len(nodes) if nodes else 'all'} MatMul nodes and {len(gathers)} embedding tables quantized"]
    return MethodResult(MODEL_FILE, "int8", ONNX.runtime_config(), notes)


@dataclass(frozen=True)
class OrtStatic:
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: bool | None = None
    # None: s8s8 with VNNI (the fast path for QDQ on x86), u8s8 without it.
    activation_type: INT8_TYPES | None = None
    weight_type: INT8_TYPES = "qint8"
    weight_matmuls_only: bool = True
    ffn_int8: bool = False  # True also quantizes the feed-forward MatMuls: faster, but see ffn_matmuls()
    embeddings_int8: bool = True
    exclude: tuple[str, ...] = ()
    # Zero points 0 (activations and weights): what TensorRT's int8 takes. None: the preset's choice, else False.
    symmetric: bool | None = None
    # defaults for one target (STATIC_PRESETS); contradicting them is an error
    preset: Literal["tensorrt"] | None = None

    def __post_init__(self):
        for key, value in STATIC_PRESETS.get(self.preset, {}).items():
            if getattr(self, key) not in (None, value):
                raise ConfigError(f"ort-static preset {self.preset} needs {key}={value}, got {getattr(self, key)}")


# TensorRT runs int8 as S8S8 with symmetric scales and reads them from the graph's QDQ nodes (explicit quantization).
STATIC_PRESETS = {"tensorrt": {"activation_type": "qint8", "weight_type": "qint8", "symmetric": True,
                               "reduce_range": False}}


@register("ort-static", OrtStatic, "onnx", needs_calibration=True,
          description="ONNX Runtime static int8, QDQ format, calibrated on real text")
def ort_static(parent: Artifact, config: OrtStatic, calibration, target: Path, ctx):
    preset = STATIC_PRESETS.get(config.preset, {})
    config = dataclasses.replace(config, **{k: v for k, v in preset.items() if getattr(config, k) is None})
    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    # Symmetric u8 activations would get zero point 128, not 0: symmetric means s8.
    activation = config.activation_type or ("qint8" if has_vnni() or config.symmetric else "quint8")
    symmetric = {"ActivationSymmetric": True, "WeightSymmetric": True} if config.symmetric else {}
    nodes = _check(weight_matmuls(parent.model_path), parent) if config.weight_matmuls_only else None
    kept_float = set(config.exclude) | (set() if config.ffn_int8 else ffn_matmuls(parent.model_path))
    if nodes is not None:
        nodes = _check([n for n in nodes if n not in kept_float], parent)
    gathers = embedding_gathers(parent.model_path) if config.embeddings_int8 else []
    ctx.progress(f"ort-static: calibrating on {calibration.samples} samples from {calibration.spec}")
    run_static(parent.model_path, target / MODEL_FILE, nodes, gathers, sorted(kept_float), calibration, ctx,
               parent.manifest.inputs, config.calibration_method, config.per_channel, reduce_range, activation,
               config.weight_type, symmetric)
    notes = [f"activations {activation}, weights {config.weight_type}, reduce_range={reduce_range}, "
             f"{'symmetric' if config.symmetric else 'asymmetric'} activations"
             + (f" (preset {config.preset})" if config.preset else ""),
             f"{len(nodes) if nodes else 'all'} MatMul nodes and {len(gathers)} embedding tables quantized; kept in "
             f"float: attention-mask arithmetic, activation-by-activation MatMuls, {len(kept_float)} excluded MatMuls"
             + ("" if config.ffn_int8 else " (feed-forward, see ffn_int8)")]
    # TensorRT needs its INT8 builder flag for the QDQ nodes to run in int8; the scales come from the graph.
    trt = {"TensorrtExecutionProvider": {"trt_int8_enable": True}}
    runtime_config = ONNX.runtime_config()
    runtime_config["onnxruntime"]["provider_options"] = trt
    reasons = {n: "feed-forward: its input's range is too wide for per-tensor int8 (ort-static ffn_int8=false)"
               for n in kept_float - set(config.exclude)}
    reasons.update({n: "excluded by the user (ort-static exclude)" for n in config.exclude})
    return MethodResult(MODEL_FILE, "int8", runtime_config, notes, reasons)
