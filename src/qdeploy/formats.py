"""What each artifact format runs with unless its manifest says otherwise: one place, read by the exporters (fp32
artifacts), the quantization backends (their outputs) and whatever compiles a model to measure it."""
from __future__ import annotations

import copy
from typing import Any

# ONNX Runtime: every graph optimization (constant folding, fusions, layout); the session reads this from the manifest.
# OpenVINO: f32 inference, because the CPU plugin otherwise runs bf16 silently on CPUs that have it.
RUNTIME_CONFIG: dict[str, dict[str, Any]] = {
    "onnx": {"onnxruntime": {"graph_optimization_level": "ORT_ENABLE_ALL"}},
    "openvino": {"openvino": {"INFERENCE_PRECISION_HINT": "f32"}},
}


def runtime_config(fmt: str) -> dict[str, Any]:
    """A fresh copy of the format's default runtime settings (callers add to it)."""
    return copy.deepcopy(RUNTIME_CONFIG[fmt])


def openvino_f32() -> dict[str, str]:
    """The properties that compile an OpenVINO model in f32 (statistics, accuracy trials)."""
    return dict(RUNTIME_CONFIG["openvino"]["openvino"])
