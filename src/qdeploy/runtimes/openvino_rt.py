"""The OpenVINO runtime on CPU, compiled with the properties in the artifact's manifest."""
from __future__ import annotations

import numpy as np

from ..artifact import Artifact
from . import RUNTIMES


class OpenVinoSession:
    def __init__(self, artifact: Artifact, threads: int | None):
        import openvino as ov

        core = ov.Core()
        properties = {"PERFORMANCE_HINT": "LATENCY"}
        # The manifest decides precision: an fp32 artifact says INFERENCE_PRECISION_HINT=f32, otherwise OpenVINO
        # silently runs bf16 on CPUs that have it.
        properties.update(artifact.manifest.runtime_config.get("openvino", {}))
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(str(artifact.model_path))
        self.compiled = core.compile_model(model, "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.properties = {k: str(v) for k, v in properties.items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer({name: inputs[name] for name in self.input_names})
        return {name: np.array(result[out]) for name, out in zip(self.output_names, self.compiled.outputs)}


class OpenVinoRuntime:
    name = "openvino-cpu"
    formats = ("openvino",)

    def unavailable_reason(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed"
        return None

    def supports(self, artifact: Artifact) -> bool:
        return artifact.format in self.formats

    def load(self, artifact: Artifact, threads: int | None = None) -> OpenVinoSession:
        return OpenVinoSession(artifact, threads)


RUNTIMES.register("openvino-cpu")(OpenVinoRuntime())
