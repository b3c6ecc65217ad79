"""Lower-precision execution without new weights: the same IR compiled with another inference precision."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact
from ..errors import UnsupportedError
from ..machine import has_bf16
from . import MethodResult, copy_model_files, register


@dataclass(frozen=True)
class OpenVinoBf16:
    pass


@register("openvino-bf16", OpenVinoBf16, "openvino",
          description="OpenVINO fp32 IR compiled for bf16 execution (CPUs with AVX512-BF16 or AMX)")
def openvino_bf16(parent: Artifact, config: OpenVinoBf16, calibration, target: Path, ctx):
    if not has_bf16():
        raise UnsupportedError("openvino-bf16 needs a CPU with avx512_bf16 or AMX; this one has neither")
    model_file = copy_model_files(parent, target)
    return MethodResult(model_file, "bf16", {"openvino": {"INFERENCE_PRECISION_HINT": "bf16"}},
                        ["weights fp32, compute bf16"])
