"""Activation statistics of an ONNX graph on calibration batches: per-channel max |x| of chosen tensors.

Collected in one pass and shared by SmoothQuant (migration scales) and the outlier recipe (which layers stay float).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def activation_absmax(model, names: list[str], batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of the named tensors over all batches."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the tensors we ask for
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    absmax: dict[str, np.ndarray] = {}
    for batch in batches:
        values = session.run(names, {k: batch[k] for k in feeds})
        for name, value in zip(names, values):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            absmax[name] = channel_max if name not in absmax else np.maximum(absmax[name], channel_max)
    return absmax
