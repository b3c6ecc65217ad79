"""One adapter over every backend: `load(artifact) -> Session`, `session.run(inputs) -> outputs`.

Runtimes never import exporters or quantization: all they need is in the artifact's manifest (`runtime_config`).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..artifact import DECODER, SEQ2SEQ, Artifact
from ..errors import UnsupportedError
from ..registry import Registry


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Runtime(Protocol):
    name: str
    formats: tuple[str, ...]

    def unavailable_reason(self) -> str | None:
        """None when this runtime can run here, else why not (a missing package or execution provider)."""

    def supports(self, artifact: Artifact) -> bool: ...

    def load(self, artifact: Artifact, threads: int | None = None) -> Session: ...


RUNTIMES: Registry[Runtime] = Registry("runtime", tuple(f"qdeploy.runtimes.{m}" for m in (
    "onnxruntime_rt", "openvino_rt", "torch_rt", "ort_genai", "openvino_genai")))


def get(name: str) -> Runtime:
    return RUNTIMES.get(name)


def names() -> list[str]:
    return RUNTIMES.names()


def runs(runtime: str, fmt: str, kind: str) -> bool:
    """Whether `runtime` runs artifacts of this format and kind (an engine runs language models only)."""
    rt = get(runtime)
    return fmt in rt.formats and kind in getattr(rt, "kinds", (kind,))


def load(artifact: Artifact, runtime: str, threads: int | None = None) -> Session:
    rt = get(runtime)
    reason = rt.unavailable_reason()
    if reason:
        available = [n for n, r in RUNTIMES if r.unavailable_reason() is None]
        raise UnsupportedError(f"runtime {runtime} is not available here: {reason}; available: {', '.join(available)}")
    kinds = getattr(rt, "kinds", None)
    if kinds is not None and artifact.format in rt.formats:
        # an engine: it runs its own generation loop, only the kinds of model it knows, and says what is missing
        if artifact.manifest.kind not in kinds:
            raise UnsupportedError(f"runtime {runtime} runs {' and '.join(kinds)} artifacts; {artifact.directory} "
                                   f"is {artifact.manifest.kind}")
        return rt.load(artifact, threads)
    if not rt.supports(artifact):
        raise UnsupportedError(f"runtime {runtime} cannot run {artifact.format} artifacts "
                               f"(it runs: {', '.join(rt.formats)})")
    if artifact.manifest.kind == DECODER:
        from . import decoding  # generative artifacts run token by token with a KV cache

        return decoding.load(artifact, rt, threads)
    if artifact.manifest.kind == SEQ2SEQ:
        from . import seq2seq_decoding  # encoder + decoder graphs, the decoder run token by token

        return seq2seq_decoding.load(artifact, rt, threads)
    return rt.load(artifact, threads)
