"""FP8 activations (E4M3 or E5M2, Micikevicius et al. 2022), one algorithm for every backend, emulated where the CPU
has no fp8 arithmetic: an accuracy study of an fp8 deployment (on hardware with fp8 units), not a speed-up here.

ONNX: static QDQ whose activation pairs are retyped to float8 (weights per-channel int8); OpenVINO: NNCF's FP8 mode
(FakeConvert ops, weights in the same fp8 format). See each backend's `fp8`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import MethodResult, register
from ..backends import backend_for

FORMATS = Literal["e4m3", "e5m2"]


@dataclass(frozen=True)
class Fp8:
    format: FORMATS = "e4m3"
    ffn_fp8: bool = True  # fp8's exponent covers the feed-forward ranges that per-tensor int8 cannot


@dataclass(frozen=True)
class NncfFp8(Fp8):
    """nncf-fp8: the same algorithm with the same defaults, on OpenVINO."""


def fp8(parent, config: Fp8, calibration, target: Path, ctx) -> MethodResult:
    backend = backend_for(parent)
    kept = [] if config.ffn_fp8 else sorted(backend.ffn_layers(parent.model_path))
    ctx.progress(f"fp8: calibrating on {calibration.samples} samples from {calibration.spec}")
    notes = backend.fp8(parent.model_path, config.format, kept, target, calibration, ctx, parent)
    if kept:
        notes[0] += f", {len(kept)} feed-forward layers float"
    return MethodResult(backend.model_file, f"fp8-{config.format}", backend.runtime_config(), notes,
                        {n: "feed-forward layer (fp8 ffn_fp8=false)" for n in kept})


register("fp8", Fp8, ("onnx", "openvino"), needs_calibration=True,
         description="fp8 (E4M3/E5M2) activations, emulated on CPUs: float8 QDQ with int8 weights on onnx (ONNX "
                     "Runtime's CPU EP), NNCF FakeConvert ops on openvino (alias nncf-fp8)")(fp8)
register("nncf-fp8", NncfFp8, "openvino", needs_calibration=True,
         description="alias of fp8 on openvino: NNCF fp8 (E4M3/E5M2) quantization, FakeConvert ops emulated by "
                     "OpenVINO's CPU plugin")(fp8)
