"""Weight-only 4-bit: ONNX Runtime's MatMulNBits and NNCF's compress_weights. Activations stay in float."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..artifact import Artifact
from ..errors import InputError
from . import register
from .nncf_methods import RUNTIME_CONFIG, _read, _save
from .ort_methods import MODEL_FILE, weight_matmuls


@dataclass(frozen=True)
class OrtWeightInt4:
    block_size: int = 32
    symmetric: bool = True
    # 4 = int8 compute of the dequantized blocks (fast on CPUs); 0 = fp32 compute.
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4


@register("ort-weight-int4", OrtWeightInt4, "onnx",
          description="ONNX Runtime 4-bit weight-only MatMul quantization (MatMulNBits, block-wise)")
def ort_weight_int4(parent: Artifact, config: OrtWeightInt4, calibration, target: Path, ctx):
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if config.block_size < 16 or config.block_size & (config.block_size - 1):
        raise InputError(f"ort-weight-int4 block_size must be a power of two >= 16, got {config.block_size}")
    ctx.progress("ort-weight-int4: packing weights in 4-bit blocks")
    nodes = weight_matmuls(parent.model_path)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(parent.model_path)), bits=4, block_size=config.block_size,
                                     is_symmetric=config.symmetric, accuracy_level=config.accuracy_level or None,
                                     nodes_to_include=nodes)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target / MODEL_FILE), use_external_data_format=False)
    return MODEL_FILE, "int4-weights", {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL"}}, [
        f"{len(nodes)} MatMul weights in 4-bit blocks of {config.block_size}"]


@dataclass(frozen=True)
class NncfWeightInt4:
    mode: Literal["int4_sym", "int4_asym"] = "int4_sym"
    group_size: int = 32
    ratio: float = 1.0  # share of layers in 4-bit; the rest int8
    data_aware: bool = False  # use the calibration set to choose which layers stay int8


@register("nncf-weight-int4", NncfWeightInt4, "openvino", needs_calibration=True,
          description="NNCF 4-bit weight compression (group-wise; ratio of 4-bit layers, optionally data-aware)")
def nncf_weight_int4(parent: Artifact, config: NncfWeightInt4, calibration, target: Path, ctx):
    import nncf

    if not 0.0 < config.ratio <= 1.0:
        raise InputError(f"nncf-weight-int4 ratio must be in (0, 1], got {config.ratio}")
    model = _read(parent)
    dataset = calibration.nncf_dataset(ctx.tokenizer, list(parent.manifest.inputs)) if config.data_aware else None
    ctx.progress(f"nncf-weight-int4: {config.mode}, group {config.group_size}, ratio {config.ratio}")
    mode = {"int4_sym": nncf.CompressWeightsMode.INT4_SYM, "int4_asym": nncf.CompressWeightsMode.INT4_ASYM}[config.mode]
    try:
        from nncf.quantization.advanced_parameters import (AdvancedCompressionParameters,
                                                           GroupSizeFallbackMode)

        # Layers whose width the group size does not divide (stories260K's 172-wide MLP) get the largest group size
        # that does, instead of failing the whole model.
        advanced = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)
        compressed = nncf.compress_weights(model, mode=mode, group_size=config.group_size, ratio=config.ratio,
                                           dataset=dataset, all_layers=True, advanced_parameters=advanced)
    except (nncf.ValidationError, ValueError, RuntimeError) as exc:
        raise InputError(f"nncf-weight-int4: {str(exc).splitlines()[0]}") from None
    return _save(compressed, target), "int4-weights", dict(RUNTIME_CONFIG), [
        f"{config.mode}, group size {config.group_size}, ratio {config.ratio}"]


