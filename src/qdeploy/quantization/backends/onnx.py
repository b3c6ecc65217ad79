"""The ONNX backend: ONNX Runtime's static QDQ, float8 QDQ and MatMulNBits under the algorithms of ../algorithms."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, UnsupportedError
from ...formats import runtime_config
from ...machine import has_vnni
from . import BACKENDS, Int8Settings
from .onnx_graph import (OnnxLinears, embedding_gathers, ffn_down_matmuls, ffn_matmuls, head_matmuls,
                         quantize_embeddings, untie_head, weight_matmuls)

MODEL_FILE = "model.onnx"
FP8_OPSET = 19  # QuantizeLinear/DequantizeLinear take float8 types from opset 19
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


def qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[name]


def run_static(model_path: Path, out_path: Path, nodes, gathers, excluded, calibration, ctx, input_names,
               calibration_method: str, per_channel: bool, reduce_range: bool, activation: str, weight: str,
               extra_options: dict | None = None) -> None:
    """ONNX Runtime static QDQ of the given MatMul (and embedding Gather) nodes; shared by the static recipes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if calibration_method != "minmax":
        # Histogram calibrators stack every batch's activations: they need one shape for all batches.
        calibration = dataclasses.replace(calibration, padding="max_length")
    from ...calibration.source import strided_chunk

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
                        activation_type=qtype(activation), weight_type=qtype(weight), calibrate_method=method)
    except Exception as exc:  # ORT raises bare Exceptions for bad graphs
        raise InputError(f"ONNX Runtime could not quantize {model_path}: {str(exc).splitlines()[0]}") from exc


def _fp8_type(fmt: str) -> int:
    from onnx import TensorProto

    return {"e4m3": TensorProto.FLOAT8E4M3FN, "e5m2": TensorProto.FLOAT8E5M2}[fmt]


def _to_opset(model_path: Path, out: Path) -> None:
    import onnx
    from onnx import version_converter

    model = onnx.load(str(model_path))
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current < FP8_OPSET:
        try:
            model = version_converter.convert_version(model, FP8_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors for ops it has no adapter for
            raise UnsupportedError(f"fp8 needs ONNX opset {FP8_OPSET}; converting {model_path} from {current} "
                                   f"failed: {str(exc).splitlines()[0]}") from None
    onnx.save_model(model, str(out))


def retype_activations(model_path: Path, fmt: str) -> int:
    """Rewrite the activation Q/DQ pairs of an int8 QDQ graph to float8 with the same range; returns their count."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    retyped: dict[tuple[str, str], tuple[str, str]] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "QuantizeLinear" and node.input[0] in inits:
            continue  # a weight (ORT folds most, per-channel ones remain as DequantizeLinear of an int8 initializer)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue
        key = (node.input[1], node.input[2])
        if key not in retyped:
            scale = numpy_helper.to_array(inits[key[0]]).astype(np.float32)
            zero = numpy_helper.to_array(inits[key[1]]).astype(np.float32)
            info = np.iinfo(numpy_helper.to_array(inits[key[1]]).dtype)
            # The int8 grid covered [(qmin - zp) s, (qmax - zp) s]: keep its larger end as fp8's largest value.
            amax = np.maximum(np.abs((info.min - zero) * scale), np.abs((info.max - zero) * scale))
            name = f"{key[0]}_fp8"
            graph.initializer.extend([
                numpy_helper.from_array((amax / FP8_MAX[fmt]).astype(np.float32), name + "_scale"),
                helper.make_tensor(name + "_zero", _fp8_type(fmt), list(zero.shape), np.zeros(zero.size).tolist())])
            retyped[key] = (name + "_scale", name + "_zero")
        node.input[1], node.input[2] = retyped[key]
    used = {name for node in graph.node for name in node.input}
    stale = [init for init in graph.initializer if init.name not in used]
    for init in stale:  # the int8 scales and zero points the pairs no longer read
        graph.initializer.remove(init)
    onnx.save_model(model, str(model_path))
    return len(retyped)


# ONNX Runtime 1.32's QDQ propagation copies a QuantizeLinear across a Reshape with an opset-21 `output_dtype` that
# contradicts its zero point's type, and the session fails to load ("output_dtype INT8 does not match y_zero_point
# type UINT8"). A QDQ graph at opset 21 or later (causal LMs export at 23) turns that one optimizer off.
QDQ_PROPAGATION = "QDQPropagationTransformer"


def _load_settings(model_path: Path, runtime_config: dict[str, Any]) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 21 or not any(node.op_type == "QuantizeLinear" for node in model.graph.node):
        return runtime_config
    settings = {**runtime_config.get("onnxruntime", {}), "disabled_optimizers": [QDQ_PROPAGATION]}
    return {**runtime_config, "onnxruntime": settings}


def _check_runs(model_path: Path) -> None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"], disabled_optimizers=[QDQ_PROPAGATION])
    except Exception as exc:  # a build without float8 kernels fails here, not at quantization
        raise UnsupportedError(f"this ONNX Runtime cannot run float8 QDQ: {str(exc).splitlines()[0]}") from None


class OnnxBackend:
    format = "onnx"
    model_file = MODEL_FILE
    runtime = "ort-cpu"

    def runtime_config(self) -> dict[str, Any]:
        return runtime_config("onnx")

    def load_settings(self, model_path: Path, runtime_config: dict[str, Any]) -> dict[str, Any]:
        return _load_settings(model_path, runtime_config)

    def read(self, model_path: Path) -> OnnxLinears:
        return OnnxLinears(model_path)

    def ffn_layers(self, model_path: Path, down_only: bool = False) -> set[str]:
        return ffn_down_matmuls(model_path) if down_only else ffn_matmuls(model_path)

    def head_layers(self, model_path: Path) -> set[str]:
        return head_matmuls(model_path)

    def int8(self, model_path, kept_float, target, calibration, ctx, parent, settings: Int8Settings) -> None:
        reduce = (not has_vnni()) if settings.reduce_range is None else settings.reduce_range
        activation = settings.activation_type or ("qint8" if has_vnni() else "quint8")
        per_channel = True if settings.per_channel is None else settings.per_channel
        nodes = [n for n in weight_matmuls(model_path) if n not in set(kept_float)]
        run_static(model_path, target / MODEL_FILE, nodes, embedding_gathers(model_path), kept_float, calibration,
                   ctx, parent.manifest.inputs, "minmax", per_channel, reduce, activation, "qint8")

    def dynamic_int8(self, model_path, kept_float, target, settings: Int8Settings) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        reduce = (not has_vnni()) if settings.reduce_range is None else settings.reduce_range
        per_channel = True if settings.per_channel is None else settings.per_channel
        nodes = [n for n in weight_matmuls(model_path) if n not in set(kept_float)]
        quantize_dynamic(str(model_path), str(target / MODEL_FILE), per_channel=per_channel, reduce_range=reduce,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"],
                         nodes_to_quantize=nodes + embedding_gathers(model_path))

    def fp8(self, model_path, fp8_format, kept_float, target, calibration, ctx, parent) -> list[str]:
        """Static QDQ calibrated as int8 (u8, asymmetric min/max), then each activation pair retyped to float8 with
        the same range (opset 19); weights stay per-channel int8. ONNX Runtime's CPU provider runs float8 Q/DQ but
        has no float8 MatMul: activations are rounded to fp8 and the MatMul runs in fp32."""
        nodes = [n for n in weight_matmuls(model_path) if n not in set(kept_float)]
        with tempfile.TemporaryDirectory(prefix="qdeploy-fp8-") as tmp:
            model19 = Path(tmp) / "model-opset19.onnx"
            _to_opset(model_path, model19)
            run_static(model19, target / MODEL_FILE, nodes, embedding_gathers(model19), list(kept_float),
                       calibration, ctx, parent.manifest.inputs, "minmax", True, False, "quint8", "qint8")
        count = retype_activations(target / MODEL_FILE, fp8_format)
        _check_runs(target / MODEL_FILE)
        return [f"{count} activation tensors in float8 {fp8_format.upper()} (scale max|x|/{FP8_MAX[fp8_format]:g}), "
                f"{len(nodes)} Linear weights per-channel int8",
                "emulated: ONNX Runtime's CPU provider rounds activations to fp8 and multiplies in fp32 "
                "(no fp8 MatMul)"]

    def weight_int4(self, model_path, config, target, calibration, ctx, parent, exclude=()) -> list[str]:
        level = 4 if config.accuracy_level is None else config.accuracy_level
        model, head = _untied(model_path)
        nodes = [n for n in weight_matmuls(model_path) if n not in set(exclude)]
        # nodes_to_exclude, not only nodes_to_include: ORT quantizes every MatMul of op_types_to_quantize whether or
        # not it is included, so an include list alone kept nothing float. The head is 8-bit below.
        model = _nbits(model, 4, config.group_size, config.symmetric, level, nodes, [*exclude, *filter(None, [head])])
        notes = [f"{len(nodes)} MatMul weights in 4-bit blocks of {config.group_size}"]
        if head:  # 8 bits for the head and the table unless asked, as NNCF's 4-bit compression keeps them
            bits, size = (4, config.group_size) if getattr(config, "head_bits", None) == 4 else (8, 32)
            model = _nbits(model, bits, size, config.symmetric, level, [head], list(exclude))
            notes.append(f"the tied lm_head ({head}) given its own weight, in {bits}-bit blocks of {size}")
        notes += _embeddings(model, config.symmetric)
        model.save_model_to_file(str(target / MODEL_FILE), use_external_data_format=False)
        return notes

    def weight_int8(self, model_path, config, target) -> list[str]:
        size = config.group_size or 32
        level = 4 if config.accuracy_level is None else config.accuracy_level
        model, head = _untied(model_path)
        nodes = weight_matmuls(model_path) + ([head] if head else [])
        model = _nbits(model, 8, size, config.symmetric, level, nodes, [])
        notes = [f"{len(nodes)} MatMul weights in 8-bit blocks of {size}"]
        if head:
            notes.append(f"the tied lm_head ({head}) given its own weight, so that it is int8 too")
        notes += _embeddings(model, config.symmetric)
        model.save_model_to_file(str(target / MODEL_FILE), use_external_data_format=False)
        return notes


def _untied(model_path: Path):
    """The graph with a tied lm_head given its own weight, and that head's name (None: nothing was tied)."""
    import onnx

    model = onnx.load(str(model_path))
    return model, untie_head(model)


def _nbits(model, bits: int, block: int, symmetric: bool, level: int, nodes: list[str], exclude: list[str]):
    """ONNX Runtime's MatMulNBits quantization of `nodes`; returns its ONNXModel wrapper (`.model` is the graph)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = getattr(model, "model", model)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=symmetric,
                                     accuracy_level=level or None, nodes_to_include=nodes,
                                     nodes_to_exclude=exclude or None)
    quantizer.process()
    return quantizer.model


def _embeddings(model, symmetric: bool) -> list[str]:
    tables = quantize_embeddings(model.model, symmetric)
    return [f"embedding table{'s' if len(tables) > 1 else ''} {', '.join(tables)} in 8-bit blocks of 32 "
            f"(GatherBlockQuantized)"] if tables else []

ONNX = BACKENDS.register("onnx")(OnnxBackend())
