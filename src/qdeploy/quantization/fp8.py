"""FP8 activations (E4M3 or E5M2, Micikevicius et al. 2022), emulated where the CPU has no fp8 arithmetic.

`fp8` (ONNX): static QDQ calibrated as ort-static does, then each activation's QuantizeLinear/DequantizeLinear pair is
retyped to float8 (opset 19) with scale max|x| / FP8_MAX; the weights stay per-channel int8. ONNX Runtime's CPU
provider runs float8 Q/DQ but has no float8 MatMul, so the pair rounds activations to fp8 and the MatMul runs in fp32:
an accuracy study of an fp8 deployment (on hardware with fp8 units), not a speed-up here.
`nncf-fp8` (OpenVINO): NNCF's FP8 mode (`QuantizationMode.FP8_*`): FakeConvert ops, which OpenVINO's CPU plugin
emulates; NNCF puts the weights in the same fp8 format (it has no int8-weight variant of that mode).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..artifact import Artifact
from ..errors import UnsupportedError
from . import register
from .nncf_methods import MODEL_FILE as OPENVINO_FILE, RUNTIME_CONFIG as OPENVINO_RUNTIME, _read
from .ort_methods import MODEL_FILE, embedding_gathers, ffn_matmuls, run_static, weight_matmuls

FP8_OPSET = 19  # QuantizeLinear/DequantizeLinear take float8 types from opset 19
FORMATS = Literal["e4m3", "e5m2"]
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


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


@dataclass(frozen=True)
class Fp8:
    format: FORMATS = "e4m3"
    ffn_fp8: bool = True  # fp8's exponent covers the feed-forward ranges that per-tensor int8 cannot


@register("fp8", Fp8, "onnx", needs_calibration=True,
          description="fp8 (E4M3/E5M2) activations, int8 weights, as float8 QDQ (emulated by ONNX Runtime's CPU EP)")
def fp8(parent: Artifact, config: Fp8, calibration, target: Path, ctx):
    nodes = weight_matmuls(parent.model_path)
    kept = set() if config.ffn_fp8 else ffn_matmuls(parent.model_path)
    nodes = [n for n in nodes if n not in kept]
    with tempfile.TemporaryDirectory(prefix="qdeploy-fp8-") as tmp:
        model19 = Path(tmp) / "model-opset19.onnx"
        _to_opset(parent.model_path, model19)
        ctx.progress(f"fp8: calibrating on {calibration.samples} samples from {calibration.spec}")
        # Activations calibrated as int8 (u8, asymmetric min/max) and then retyped: the same range, fp8 steps.
        run_static(model19, target / MODEL_FILE, nodes, embedding_gathers(model19), sorted(kept), calibration, ctx,
                   parent.manifest.inputs, "minmax", True, False, "quint8", "qint8")
    count = retype_activations(target / MODEL_FILE, config.format)
    _check_runs(target / MODEL_FILE)
    return MODEL_FILE, f"fp8-{config.format}", {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL"}}, [
        f"{count} activation tensors in float8 {config.format.upper()} (scale max|x|/{FP8_MAX[config.format]:g}), "
        f"{len(nodes)} Linear weights per-channel int8" + (f", {len(kept)} feed-forward layers float" if kept else ""),
        "emulated: ONNX Runtime's CPU provider rounds activations to fp8 and multiplies in fp32 (no fp8 MatMul)"]


def _check_runs(model_path: Path) -> None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # a build without float8 kernels fails here, not at quantization
        raise UnsupportedError(f"this ONNX Runtime cannot run float8 QDQ: {str(exc).splitlines()[0]}") from None


@dataclass(frozen=True)
class NncfFp8:
    format: FORMATS = "e4m3"


@register("nncf-fp8", NncfFp8, "openvino", needs_calibration=True,
          description="NNCF fp8 (E4M3/E5M2) quantization: FakeConvert ops, emulated by OpenVINO's CPU plugin")
def nncf_fp8(parent: Artifact, config: NncfFp8, calibration, target: Path, ctx):
    import nncf
    import openvino as ov

    mode = {"e4m3": nncf.QuantizationMode.FP8_E4M3, "e5m2": nncf.QuantizationMode.FP8_E5M2}[config.format]
    model = _read(parent)
    ctx.progress(f"nncf-fp8: calibrating on {calibration.samples} samples from {calibration.spec}")
    try:
        quantized = nncf.quantize(model, calibration.nncf_dataset(ctx.tokenizer, list(parent.manifest.inputs),
                                                                  ctx.progress),
                                  mode=mode, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=calibration.batch_count())
    except (nncf.ValidationError, nncf.ParameterNotSupportedError) as exc:
        raise UnsupportedError(f"nncf-fp8: {str(exc).splitlines()[0]}") from None
    try:
        ov.Core().compile_model(quantized, "CPU", dict(OPENVINO_RUNTIME["openvino"]))
    except RuntimeError as exc:
        raise UnsupportedError(f"OpenVINO's CPU plugin cannot run the fp8 model: {str(exc).splitlines()[0]}") from None
    ov.save_model(quantized, str(target / OPENVINO_FILE), compress_to_fp16=False)
    fake = sum(op.get_type_name() == "FakeConvert" for op in quantized.get_ops())
    return OPENVINO_FILE, f"fp8-{config.format}", dict(OPENVINO_RUNTIME), [
        f"{fake} FakeConvert ops ({config.format.upper()}) on activations and weights; emulated on this CPU"]
