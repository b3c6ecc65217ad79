"""fp16 weights and compute for GPUs (CUDA, TensorRT): half the size, tensor-core matmuls.

The graph's inputs and outputs stay as they were (keep_io_types), so every runtime adapter and every caller is
unchanged. ONNX Runtime's CPU provider runs the graph too, by casting the ops it has no fp16 kernel for back to fp32:
correct, but no faster than fp32 there (see README, "GPU").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact
from ..errors import InputError
from . import MethodResult, register
from .backends.onnx import MODEL_FILE, ONNX

PROTOBUF_LIMIT = 2**31 - 1  # one ONNX file holds at most 2 GB; larger graphs keep their weights beside it


@dataclass(frozen=True)
class Fp16:
    # Op types kept in fp32 on top of the converter's own list (ops with no fp16 kernel anywhere).
    keep_fp32_ops: tuple[str, ...] = ()
    # Constants beyond fp16's range (the attention mask's -3.4e38) are clamped to this, not turned into -inf.
    max_finite_val: float = 65504.0


@register("fp16", Fp16, "onnx", description="fp16 weights and compute (for CUDA / TensorRT); inputs and outputs "
                                           "stay fp32")
def fp16(parent: Artifact, config: Fp16, calibration, target: Path, ctx):
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    ctx.progress("fp16: converting weights and compute")
    model = onnx.load(str(parent.model_path))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.keep_fp32_ops))
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                             max_finite_val=config.max_finite_val)
    except Exception as exc:  # the converter raises bare exceptions on graphs it cannot handle
        raise InputError(f"could not convert {parent.model_path} to fp16: {str(exc).splitlines()[0]}") from exc
    large = converted.ByteSize() > PROTOBUF_LIMIT
    onnx.save_model(converted, str(target / MODEL_FILE), save_as_external_data=large,
                    location=MODEL_FILE + ".data" if large else None)
    halves = sum(1 for init in converted.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16)
    notes = [f"{halves} of {len(converted.graph.initializer)} initializers fp16; inputs and outputs keep their types",
             "op types kept fp32: " + (", ".join(config.keep_fp32_ops) or "only the converter's defaults")]
    runtime_config = ONNX.runtime_config()
    runtime_config["onnxruntime"]["provider_options"] = {"TensorrtExecutionProvider": {"trt_fp16_enable": True}}
    return MethodResult(MODEL_FILE, "fp16", runtime_config, notes)
