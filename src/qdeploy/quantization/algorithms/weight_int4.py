"""Weight-only 4-bit, one algorithm for every backend: block-wise int4 weights, activations in float (ONNX Runtime's
MatMulNBits on ONNX, NNCF's compress_weights on OpenVINO)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from ...errors import ConfigError
from .. import MethodResult, register
from ..backends import backend_for


@dataclass(frozen=True)
class WeightInt4:
    FORMAT_OPTIONS: ClassVar[dict[str, str]] = {"accuracy_level": "onnx", "genai_form": "onnx", "head_bits": "onnx",
                                                "ratio": "openvino", "data_aware": "openvino"}
    group_size: int = 32  # weights sharing one scale (ONNX Runtime's block size, NNCF's group size)
    symmetric: bool = True  # int4_sym; false: int4_asym (a zero point per group)
    # ONNX Runtime: 4 = int8 compute, activations rounded to int8 per block at run time (fast on CPUs); 0 = fp32
    # compute (none: 4)
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None
    # ONNX: a decoder's graph rewritten in ONNX Runtime GenAI's form (GroupQueryAttention, fused residual norms;
    # quantization/backends/onnx_genai_form.py); false keeps the exported layout (none: true)
    genai_form: bool | None = None
    # ONNX: bits of a tied lm_head's own copy (none: 8, as NNCF keeps the head; 4 as ONNX Runtime GenAI's builder)
    head_bits: Literal[4, 8] | None = None
    ratio: float | None = None  # NNCF: share of layers in 4-bit, the rest int8 (none: 1.0)
    data_aware: bool | None = None  # NNCF: use the calibration set to choose which layers stay int8 (none: false)

    def __post_init__(self):
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"weight-int4 ratio must be in (0, 1], got {self.ratio}")

    def check_format(self, fmt: str) -> None:
        if fmt == "onnx" and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise ConfigError(f"weight-int4 group_size must be a power of two >= 16 on onnx, got {self.group_size}")


@dataclass(frozen=True)
class OrtWeightInt4(WeightInt4):
    """ort-weight-int4: weight-int4 on ONNX."""


@dataclass(frozen=True)
class NncfWeightInt4(WeightInt4):
    """nncf-weight-int4: weight-int4 on OpenVINO."""


def weight_int4(parent, config: WeightInt4, calibration, target: Path, ctx) -> MethodResult:
    backend = backend_for(parent)
    ctx.progress(f"weight-int4: {'symmetric' if config.symmetric else 'asymmetric'} 4-bit weights in groups of "
                 f"{config.group_size}")
    notes = backend.weight_int4(parent.model_path, config, target, calibration, ctx, parent)
    return MethodResult(backend.model_file, "int4-weights", backend.runtime_config(), notes)


TEXT = "4-bit weight compression, group-wise (activations float, or int8 per block in ONNX Runtime's fast path)"
register("weight-int4", WeightInt4, ("onnx", "openvino"),
         description=TEXT + ": ONNX Runtime MatMulNBits on onnx, NNCF compress_weights on openvino (ratio of 4-bit "
                            "layers, optionally data-aware); aliases ort-weight-int4, nncf-weight-int4")(weight_int4)
register("ort-weight-int4", OrtWeightInt4, "onnx", description="alias of weight-int4 on onnx: ONNX Runtime "
                                                               "MatMulNBits, block-wise")(weight_int4)
register("nncf-weight-int4", NncfWeightInt4, "openvino", needs_calibration=True,
         description="alias of weight-int4 on openvino: NNCF compress_weights (ratio of 4-bit layers, optionally "
                     "data-aware)")(weight_int4)
