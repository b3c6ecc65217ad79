"""ONNX Runtime int8: dynamic (weights int8, activations quantized on the fly) and static QDQ (calibrated)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..artifact import Artifact
from ..errors import ConfigError, InputError, QdeployError
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


ACTIVATIONS = {"Erf", "Gelu", "FastGelu", "BiasGelu", "Relu", "Tanh", "Sigmoid"}


def ffn_matmuls(model_path: Path) -> set[str]:
    """The feed-forward MatMuls of each block: the one feeding the activation function and the one it feeds.

    Their inputs carry the widest activation ranges of a transformer (GELU outputs and the outlier channels of the
    attention block's LayerNorm): per-tensor int8 there costs MiniLM about 0.07 of embedding cosine (0.925 vs 0.997).
    Found from the graph's structure, not from layer names.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def near(start, step, hops=4):
        frontier, seen = [start], []
        for _ in range(hops):
            frontier = [n for node in frontier for n in step(node)]
            seen += frontier
        return seen

    up_of = lambda node: [producer[i] for i in node.input if i in producer]
    down_of = lambda node: [c for o in node.output for c in consumers.get(o, [])]
    found = set()
    for node in graph.node:
        if node.op_type in ACTIVATIONS:
            found |= {n.name for n in near(node, up_of) if n.op_type == "MatMul"}
            found |= {n.name for n in near(node, down_of) if n.op_type == "MatMul"}
    return found


def ffn_down_matmuls(model_path: Path) -> set[str]:
    """Of the feed-forward MatMuls, those reading the activation function's output (the down-projection): an input
    with no LayerNorm before it, whose skewed range neither per-tensor int8 nor SmoothQuant's scaling serves well."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    ffn = ffn_matmuls(model_path)

    def after_activation(node, hops=4) -> bool:
        frontier = [producer[i] for i in node.input if i in producer]
        for _ in range(hops):
            if any(n.op_type in ACTIVATIONS for n in frontier):
                return True
            frontier = [producer[i] for n in frontier for i in n.input if i in producer]
        return False

    return {n.name for n in graph.node if n.name in ffn and after_activation(n)}


def embedding_gathers(model_path: Path) -> list[str]:
    """Gather nodes reading a 2-D constant table: the token, position and type embeddings (over half of MiniLM's
    bytes). Int8 tables shrink the file ~4x there and cost no speed: a lookup is a lookup."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    tables = {init.name for init in model.graph.initializer if len(init.dims) == 2}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]


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
    embeddings_int8: bool = True


@register("ort-dynamic", OrtDynamic, "onnx", description="ONNX Runtime dynamic int8 (MatMul weights int8, activations at run time)")
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
    return MODEL_FILE, "int8", {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL"}}, notes


def run_static(model_path: Path, out_path: Path, nodes, gathers, excluded, calibration, ctx, input_names,
               calibration_method: str, per_channel: bool, reduce_range: bool, activation: str, weight: str,
               extra_options: dict | None = None) -> None:
    """ONNX Runtime static QDQ of the given MatMul (and embedding Gather) nodes; shared by the static recipes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if calibration_method != "minmax":
        # Histogram calibrators stack every batch's activations: they need one shape for all batches.
        calibration = dataclasses.replace(calibration, padding="max_length")
    from ..calibration.source import strided_chunk

    reader = calibration.ort_reader(ctx.tokenizer, list(input_names), ctx.progress)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration_method]
    try:
        # quantize_static keeps its augmented model in a temporary directory of its own, not the working directory.
        # Strided calibration folds a few batches at a time into the ranges or histograms: without it ORT holds every
        # batch's intermediate tensors at once, and memory grows with the number of samples.
        quantize_static(str(model_path), str(out_path), reader, quant_format=QuantFormat.QDQ,
                        extra_options={"CalibStridedMinMax": strided_chunk(len(reader)), **(extra_options or {})},
                        op_types_to_quantize=["MatMul"] + (["Gather"] if gathers else []),
                        nodes_to_quantize=list(nodes) + list(gathers) if nodes is not None else None,
                        nodes_to_exclude=list(excluded) or None, per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=_qtype(activation), weight_type=_qtype(weight), calibrate_method=method)
    except Exception as exc:  # ORT raises bare Exceptions for bad graphs
        raise InputError(f"ONNX Runtime could not quantize {model_path}: {str(exc).splitlines()[0]}") from exc


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
    preset: Literal["tensorrt"] | None = None  # defaults for one target (STATIC_PRESETS); contradicting them is an error

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
    return MODEL_FILE, "int8", {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL",
                                                "provider_options": trt}}, notes
