"""PyTorch eager: the fp32 baseline every speed-up is measured against."""
from __future__ import annotations

import numpy as np

from ..artifact import Artifact
from ..tasks import load_model, task
from . import RUNTIMES


class TorchSession:
    def __init__(self, artifact: Artifact, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        self._torch = torch
        self.model = load_model(artifact.directory, artifact.manifest.task,
                                trust_remote_code=bool(artifact.manifest.runtime_config.get("trust_remote_code")),
                                pickle=bool(artifact.manifest.source.get("pickle")))
        self.input_names = list(artifact.manifest.inputs)
        self.output_names = list(task(artifact.manifest.task).outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        if self.threads and torch.get_num_threads() != self.threads:
            # PyTorch's thread count is per process: sessions of different counts (the thread probe, or a stream of
            # the throughput benchmark) each restore their own before they run.
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
        return {name: out[name].float().numpy() for name in self.output_names}


class TorchRuntime:
    name = "torch"
    formats = ("pytorch",)

    def unavailable_reason(self) -> str | None:
        from importlib.util import find_spec

        # Found, not imported: `qdeploy list` and the plan check answer in well under a second (torch takes longer).
        return None if find_spec("torch") else "torch is not installed"

    def supports(self, artifact: Artifact) -> bool:
        return artifact.format in self.formats

    def load(self, artifact: Artifact, threads: int | None = None) -> TorchSession:
        return TorchSession(artifact, threads)


RUNTIMES.register("torch")(TorchRuntime())
