"""ONNX Runtime with one execution provider per registered runtime name."""
from __future__ import annotations

import numpy as np

from ..artifact import Artifact
from . import RUNTIMES


class OrtSession:
    def __init__(self, artifact: Artifact, provider: str, provider_options: dict, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        config = artifact.manifest.runtime_config.get("onnxruntime", {})
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, config.get("graph_optimization_level", "ORT_ENABLE_ALL"))
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(artifact.model_path), options, providers=[provider],
                                            provider_options=[provider_options])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.provider_options = provider_options
        self.session_options = {"intra_op_num_threads": options.intra_op_num_threads,
                                "graph_optimization_level": str(options.graph_optimization_level)}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))


class OrtRuntime:
    formats = ("onnx",)

    def __init__(self, name: str, provider: str, provider_options: dict | None = None):
        self.name = name
        self.provider = provider
        self.provider_options = provider_options or {}

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        available = ort.get_available_providers()
        if self.provider not in available:
            return f"execution provider {self.provider} is not in this onnxruntime build (it has {', '.join(available)})"
        return None

    def supports(self, artifact: Artifact) -> bool:
        return artifact.format in self.formats

    def load(self, artifact: Artifact, threads: int | None = None) -> OrtSession:
        return OrtSession(artifact, self.provider, self.provider_options, threads)


for _rt in (
    OrtRuntime("ort-cpu", "CPUExecutionProvider"),
    OrtRuntime("ort-cuda", "CUDAExecutionProvider"),
    OrtRuntime("ort-tensorrt", "TensorrtExecutionProvider"),
    # f32 on purpose: OpenVINO would otherwise run bf16 on CPUs that have it, and the fp32 variant would not be fp32.
    OrtRuntime("ort-openvino", "OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"}),
):
    RUNTIMES.register(_rt.name)(_rt)
