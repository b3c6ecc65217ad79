"""ONNX Runtime int8: dynamic (weights int8, activations quantized on the fly) and static QDQ (calibrated)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..artifact import Artifact
from ..errors import InputError, QdeployError
from ..machine import has_vnni
from . import register

MODEL_FILE = "model.onnx"
INT8_TYPES = Literal["qint8", "quint8"]


def weight_matmuls(model_path: Path) -> list[str]:
    """MatMul nodes with a constant weight: the Linear layers.

    Activation-by-activation MatMuls (attention scores, attention times values) and the attention-mask arithmetic stay
    in float: quantizing the mask's Add alone (its range reaches 1e36) drops MiniLM's embedding cosine to about 0.4.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]


def _check(nodes: list[str], parent: Artifact) -> list[str]:
    if not nodes:
        raise QdeployError(f"{parent.directory}: no MatMul with a constant weight found; nothing to quantize")
    return nodes


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[name]


def _onnx_error(exc: Exception, parent: Artifact) -> QdeployError:
    return InputError(f"ONNX Runtime could not quantize {parent.model_path}: {str(exc).splitlines()[0]}")


@dataclass(frozen=True)
class OrtDynamic:
    per_channel: bool = True
    # None: decided by the CPU. Without VNNI, u8s8 products can saturate 16-bit accumulators: 7-bit weights avoid it.
    reduce_range: bool | None = None
    weight_type: INT8_TYPES = "qint8"
    weight_matmuls_only: bool = True


@register("ort-dynamic", OrtDynamic, "onnx", description="ONNX Runtime dynamic int8 (MatMul weights int8, activations at run time)")
def ort_dynamic(parent: Artifact, config: OrtDynamic, calibration, target: Path, ctx):
    from onnxruntime.quantization import quantize_dynamic

    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    nodes = _check(weight_matmuls(parent.model_path), parent) if config.weight_matmuls_only else None
    ctx.progress("ort-dynamic: quantizing weights")
    try:
        quantize_dynamic(str(parent.model_path), str(target / MODEL_FILE), per_channel=config.per_channel,
                         reduce_range=reduce_range, weight_type=_qtype(config.weight_type),
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes)
    except Exception as exc:  # ORT raises bare Exceptions for bad graphs
        raise _onnx_error(exc, parent) from exc
    notes = [f"reduce_range={reduce_range} ({'CPU has VNNI' if has_vnni() else 'CPU lacks VNNI'})",
             f"{len(nodes) if nodes else 'all'} MatMul nodes quantized"]
    return MODEL_FILE, "int8", {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL"}}, notes


@dataclass(frozen=True)
class OrtStatic:
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: bool | None = None
    # None: s8s8 with VNNI (the fast path for QDQ on x86), u8s8 without it.
    activation_type: INT8_TYPES | None = None
    weight_type: INT8_TYPES = "qint8"
    weight_matmuls_only: bool = True
    exclude: tuple[str, ...] = ()


@register("ort-static", OrtStatic, "onnx", needs_calibration=True,
          description="ONNX Runtime static int8, QDQ format, calibrated on real text")
def ort_static(parent: Artifact, config: OrtStatic, calibration, target: Path, ctx):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    activation = config.activation_type or ("qint8" if has_vnni() else "quint8")
    nodes = _check(weight_matmuls(parent.model_path), parent) if config.weight_matmuls_only else None
    if nodes is not None and config.exclude:
        nodes = [n for n in nodes if n not in config.exclude]
    reader = calibration.ort_reader(ctx.tokenizer, list(parent.manifest.inputs))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration_method]
    ctx.progress(f"ort-static: calibrating on {calibration.samples} samples from {calibration.spec}")
    try:
        # quantize_static keeps its augmented model in a temporary directory of its own, not the working directory.
        quantize_static(str(parent.model_path), str(target / MODEL_FILE), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                        nodes_to_exclude=list(config.exclude) or None, per_channel=config.per_channel,
                        reduce_range=reduce_range, activation_type=_qtype(activation),
                        weight_type=_qtype(config.weight_type), calibrate_method=method)
    except Exception as exc:
        raise _onnx_error(exc, parent) from exc
    notes = [f"activations {activation}, weights {config.weight_type}, reduce_range={reduce_range}",
             f"{len(nodes) if nodes else 'all'} MatMul nodes quantized; attention-mask arithmetic kept in float"]
    return MODEL_FILE, "int8", {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL"}}, notes
