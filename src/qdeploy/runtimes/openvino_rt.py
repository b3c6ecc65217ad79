"""The OpenVINO runtime on CPU, compiled with the properties in the artifact's manifest."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..artifact import Artifact
from . import RUNTIMES


class OpenVinoThroughputRunner:
    """One compiled model serving every concurrent request, as OpenVINO is meant to serve them.

    PERFORMANCE_HINT=THROUGHPUT lets OpenVINO split the cores into streams and pin them; the queue holds as many
    infer requests as the compiled model reports as optimal. N separate LATENCY-compiled models in threads would
    instead compete for the same cores with N thread pools.
    """

    def __init__(self, core, model, properties: dict, input_names: list[str], streams: int | None):
        import openvino as ov

        properties = {**properties, "PERFORMANCE_HINT": "THROUGHPUT"}
        if streams:
            properties["NUM_STREAMS"] = streams
        self.compiled = core.compile_model(model, "CPU", properties)
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self.queue.set_callback(self._completed)
        self.input_names = input_names
        self.settings = {"performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
                         "num_streams": int(self.compiled.get_property("NUM_STREAMS")),
                         "infer_requests": self.requests,
                         "inference_num_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS"))}

    @staticmethod
    def _completed(request, done: Callable[[float], None] | None) -> None:
        if done is not None:
            done(request.latency)  # the request's own inference time in ms, without time spent waiting in the queue

    def submit(self, inputs: dict[str, np.ndarray], done: Callable[[float], None] | None) -> None:
        self.queue.start_async({name: inputs[name] for name in self.input_names}, done)

    def wait(self) -> None:
        self.queue.wait_all()


class OpenVinoSession:
    def __init__(self, artifact: Artifact, threads: int | None):
        import openvino as ov

        self._core = ov.Core()
        properties = {"PERFORMANCE_HINT": "LATENCY"}
        # The manifest decides precision: an fp32 artifact says INFERENCE_PRECISION_HINT=f32, otherwise OpenVINO
        # silently runs bf16 on CPUs that have it.
        properties.update(artifact.manifest.runtime_config.get("openvino", {}))
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        self._model = self._core.read_model(str(artifact.model_path))
        self._properties = properties
        self.compiled = self._core.compile_model(self._model, "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.properties = {k: str(v) for k, v in properties.items()}
        self.settings = {"device": "CPU", "properties": self.properties}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer({name: inputs[name] for name in self.input_names})
        return {name: np.array(result[out]) for name, out in zip(self.output_names, self.compiled.outputs)}

    def throughput_runner(self, streams: int | None = None) -> OpenVinoThroughputRunner:
        """A second compilation of the same model for throughput (the latency one keeps its LATENCY hint)."""
        return OpenVinoThroughputRunner(self._core, self._model, self._properties, self.input_names, streams)


class OpenVinoRuntime:
    name = "openvino-cpu"
    formats = ("openvino",)

    def unavailable_reason(self) -> str | None:
        from importlib.util import find_spec

        # Found, not imported: `qdeploy list` and the plan check answer in well under a second (openvino takes longer).
        return None if find_spec("openvino") else "openvino is not installed"

    def supports(self, artifact: Artifact) -> bool:
        return artifact.format in self.formats

    def load(self, artifact: Artifact, threads: int | None = None) -> OpenVinoSession:
        return OpenVinoSession(artifact, threads)


RUNTIMES.register("openvino-cpu")(OpenVinoRuntime())
