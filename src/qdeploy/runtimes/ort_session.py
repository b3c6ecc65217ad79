"""One ONNX Runtime session for an artifact, with the settings its manifest asks for: what single-call sessions and
decoders share."""
from __future__ import annotations

from ..artifact import Artifact


def session(artifact: Artifact, providers: list[tuple[str, dict]], threads: int | None):
    """An InferenceSession for the artifact's graph with the session settings its manifest asks for."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    config = artifact.manifest.runtime_config.get("onnxruntime", {})
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, config.get("graph_optimization_level", "ORT_ENABLE_ALL"))
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(artifact.model_path), options, providers=[p for p, _ in providers],
                                provider_options=[o for _, o in providers],
                                disabled_optimizers=list(config.get("disabled_optimizers", [])))
