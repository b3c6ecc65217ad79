"""Weight int8, one algorithm for every backend: ONNX Runtime's MatMulNBits with 8 bits (block-wise scales) on ONNX;
NNCF's compress_weights (per-channel scales, activations in float) on OpenVINO.

At batch 1 a decoder's step is bound by weight traffic, not arithmetic: a quarter of the bytes is where the speed
comes from. On ONNX Runtime the fast kernel (accuracy_level 4, the default) also rounds each activation row to int8 in
blocks of 32 channels at run time and multiplies in int8: w8a8 with fine-grained dynamic scales, which keeps SmolLM2-
135M's LAMBADA accuracy where per-tensor activation scales (ort-dynamic, ort-static) collapse it. accuracy_level 1
keeps activations in float but has no 8-bit kernel in ONNX Runtime 1.32: measured 7x slower than level 4 there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from ...errors import ConfigError
from .. import MethodResult, register
from ..backends import backend_for


@dataclass(frozen=True)
class WeightInt8:
    FORMAT_OPTIONS: ClassVar[dict[str, str]] = {"group_size": "onnx", "accuracy_level": "onnx", "genai_form": "onnx"}
    symmetric: bool = False  # int8_sym; false: a zero point per scale (NNCF's int8_asym default)
    # ONNX Runtime: weights sharing one scale (none: 32; MatMulNBits has no per-channel 8-bit layout for widths
    # that are not a power of two, such as SmolLM2's 576)
    group_size: int | None = None
    # ONNX Runtime: 4 = int8 compute, activations rounded to int8 per block at run time; 1 = fp32 compute (none: 4)
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None
    # ONNX: a decoder's graph rewritten in ONNX Runtime GenAI's form (GroupQueryAttention, fused residual norms;
    # quantization/backends/onnx_genai_form.py); false keeps the exported layout (none: true)
    genai_form: bool | None = None

    def check_format(self, fmt: str) -> None:
        size = self.group_size
        if fmt == "onnx" and size is not None and (size < 16 or size & (size - 1)):
            raise ConfigError(f"weight-int8 group_size must be a power of two >= 16 on onnx, got {size}")


@dataclass(frozen=True)
class NncfWeightInt8(WeightInt8):
    """nncf-weight-int8: weight-int8 on OpenVINO. `mode` is the name's older spelling of `symmetric`, kept so that
    plans written for it still mean what they said."""
    mode: Literal["int8_asym", "int8_sym"] | None = None  # the older spelling: int8_sym is symmetric=true

    def __post_init__(self):
        if self.mode is None:
            return
        if self.symmetric and self.mode == "int8_asym":
            raise ConfigError("nncf-weight-int8: mode int8_asym contradicts symmetric=true; give one of them")
        object.__setattr__(self, "symmetric", self.mode == "int8_sym")


def weight_int8(parent, config: WeightInt8, calibration, target: Path, ctx) -> MethodResult:
    backend = backend_for(parent)
    ctx.progress(f"weight-int8: {'symmetric' if config.symmetric else 'asymmetric'} int8 weights")
    notes = backend.weight_int8(parent.model_path, config, target)
    return MethodResult(backend.model_file, "int8-weights", backend.runtime_config(), notes)


register("weight-int8", WeightInt8, ("onnx", "openvino"),
         description="int8 weights: ONNX Runtime MatMulNBits (8 bits, block-wise; its fast path also rounds "
                     "activations to int8 per block of 32) on onnx, NNCF compress_weights (per-channel, activations "
                     "float) on openvino; alias nncf-weight-int8")(weight_int8)
register("nncf-weight-int8", NncfWeightInt8, "openvino",
         description="alias of weight-int8 on openvino: NNCF weight-only int8 compression, per-channel (activations "
                     "stay in float)")(weight_int8)
