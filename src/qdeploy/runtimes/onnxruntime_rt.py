"""ONNX Runtime with one execution provider per registered runtime name."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact
from . import RUNTIMES
from .ort_session import session


class OrtSession:
    def __init__(self, artifact: Artifact, providers: list[tuple[str, dict]], threads: int | None):
        self.session = session(artifact, providers, threads)
        options = self.session.get_session_options()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.provider_options = providers[0][1]
        self.session_options = {"intra_op_num_threads": options.intra_op_num_threads,
                                "graph_optimization_level": str(options.graph_optimization_level)}
        # What ONNX Runtime actually applied (defaults filled in), not only what was asked for.
        applied = self.session.get_provider_options()
        self.settings = {"providers": self.session.get_providers(),
                         "provider_options": {p: dict(applied.get(p, o)) for p, o in providers},
                         "session_options": self.session_options, "io_binding": False}
        disabled = artifact.manifest.runtime_config.get("onnxruntime", {}).get("disabled_optimizers")
        if disabled:
            self.settings["disabled_optimizers"] = list(disabled)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))


class BoundRun:
    """One batch whose inputs were copied to the device once; each call runs the model there and leaves the
    outputs there. `outputs()` copies them back, only when asked."""

    def __init__(self, session: OrtSession, inputs: dict[str, np.ndarray], device: str, device_id: int):
        import onnxruntime as ort

        self._session = session.session
        self._names = session.output_names
        self._binding = self._session.io_binding()
        # Kept referenced: on the CPU an OrtValue wraps the numpy buffer instead of copying it.
        self._arrays = [np.ascontiguousarray(inputs[name]) for name in session.input_names]
        self._values = [ort.OrtValue.ortvalue_from_numpy(a, device, device_id) for a in self._arrays]
        for name, value in zip(session.input_names, self._values):
            self._binding.bind_ortvalue_input(name, value)
        for name in self._names:
            self._binding.bind_output(name, device, device_id)

    def __call__(self) -> None:
        self._session.run_with_iobinding(self._binding)

    def outputs(self) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self._binding.copy_outputs_to_cpu()))


class OrtDeviceSession(OrtSession):
    """ONNX Runtime on an accelerator: `bind` keeps a batch on the device so that timing the model does not time
    PCIe copies; `run` still takes and returns host arrays (what evaluation and end-to-end timing need)."""

    def __init__(self, artifact: Artifact, providers: list[tuple[str, dict]], threads: int | None, device: str):
        super().__init__(artifact, providers, threads)
        self.device = device
        self.device_id = int(providers[0][1].get("device_id", 0))
        self.settings.update(io_binding=True, device=f"{device}:{self.device_id}")

    def bind(self, inputs: dict[str, np.ndarray]) -> BoundRun:
        return BoundRun(self, inputs, self.device, self.device_id)


class OrtRuntime:
    formats = ("onnx",)

    def __init__(self, name: str, provider: str, provider_options: dict | None = None,
                 fallbacks: tuple[tuple[str, dict], ...] = (), device: str | None = None):
        """`fallbacks`: providers for the nodes the main one cannot run (TensorRT hands them to CUDA);
        `device`: where I/O binding keeps inputs and outputs (None: host memory, no binding)."""
        self.name = name
        self.provider = provider
        self.provider_options = provider_options or {}
        self.fallbacks = fallbacks
        self.device = device

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        available = ort.get_available_providers()
        missing = [p for p in (self.provider, *(f for f, _ in self.fallbacks)) if p not in available]
        if missing:
            return (f"{'execution providers' if len(missing) > 1 else 'execution provider'} {', '.join(missing)} "
                    f"{'are' if len(missing) > 1 else 'is'} not in this onnxruntime build "
                    f"(it has {', '.join(available)})")
        return None

    def supports(self, artifact: Artifact) -> bool:
        return artifact.format in self.formats

    def load(self, artifact: Artifact, threads: int | None = None) -> OrtSession:
        # The artifact may ask a provider for more: a QDQ int8 artifact turns on TensorRT's INT8 builder flag (its
        # Q/DQ nodes carry the scales), an fp16 one the FP16 flag. A provider not in use ignores what it is not.
        wanted = artifact.manifest.runtime_config.get("onnxruntime", {}).get("provider_options", {})
        providers = [(p, {**o, **wanted.get(p, {})})
                     for p, o in ((self.provider, self.provider_options), *self.fallbacks)]
        if self.device:
            return OrtDeviceSession(artifact, providers, threads, self.device)
        return OrtSession(artifact, providers, threads)


_CUDA = ("CUDAExecutionProvider", {"device_id": 0})
for _rt in (
    OrtRuntime("ort-cpu", "CPUExecutionProvider"),
    OrtRuntime("ort-cuda", *_CUDA, device="cuda"),
    # fp16 and int8 off unless the artifact asks (see load): TensorRT would otherwise be free to run an fp32 artifact
    # in fp16. Int8 scales come from the artifact's QDQ nodes (explicit quantization), never from TensorRT's own
    # calibration. Built engines are cached: building one takes minutes.
    OrtRuntime("ort-tensorrt", "TensorrtExecutionProvider",
               {"device_id": 0, "trt_fp16_enable": False, "trt_int8_enable": False, "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(Path.home() / ".cache" / "qdeploy" / "tensorrt")},
               fallbacks=(_CUDA,), device="cuda"),
    # f32 on purpose: OpenVINO would otherwise run bf16 on CPUs that have it, and the fp32 variant would not be fp32.
    OrtRuntime("ort-openvino", "OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"}),
):
    RUNTIMES.register(_rt.name)(_rt)
