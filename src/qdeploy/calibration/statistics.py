"""Activation statistics of a float graph on calibration batches, for ONNX and OpenVINO models alike.

A backend yields, per batch, the values of the tensors asked for (`onnx_activations`, `openvino_activations`); the
reductions (`absmax`, `row_samples`) do not know where the values came from. SmoothQuant (migration scales and its
alpha search) and the outlier recipe (which layers stay float) share them.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ..formats import openvino_f32

Batches = Iterable[dict[str, np.ndarray]]


def onnx_activations(model, names: list[str], batches: Batches) -> Iterator[dict[str, np.ndarray]]:
    """The named tensors of an ONNX ModelProto, one dict per batch (the graph is run unoptimized, fp32)."""
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
    for batch in batches:
        yield dict(zip(names, session.run(names, {k: batch[k] for k in feeds})))


def openvino_activations(model, outputs: dict, batches: Batches) -> Iterator[dict[str, np.ndarray]]:
    """The given output ports (name -> ov.Output) of an OpenVINO model, one dict per batch, computed in f32.

    The ports become extra results of `model` (pass a copy you may change)."""
    import openvino as ov

    names = list(outputs)
    first = len(model.outputs)
    model.add_outputs([outputs[name] for name in names])
    compiled = ov.Core().compile_model(model, "CPU", openvino_f32())
    request = compiled.create_infer_request()
    feeds = [port.get_any_name() for port in model.inputs]
    for batch in batches:
        request.reset_state()  # a stateful decoder would otherwise carry one batch's KV cache into the next
        result = request.infer({name: batch[name] for name in feeds})
        yield {name: result[compiled.outputs[first + i]] for i, name in enumerate(names)}


def absmax(stream: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of every tensor over all batches."""
    peaks: dict[str, np.ndarray] = {}
    for values in stream:
        for name, value in values.items():
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peaks[name] = channel_max if name not in peaks else np.maximum(peaks[name], channel_max)
    return peaks


def absmax_and_rows(stream: Iterable[dict[str, np.ndarray]], rows: int,
                    seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`absmax` plus up to `rows` token rows of each tensor (a seeded sample of every batch's rows), for searches that
    replay a layer on real activations without holding all of them."""
    rng = np.random.default_rng(seed)
    peaks: dict[str, np.ndarray] = {}
    kept: dict[str, list[np.ndarray]] = {}

    def collect():
        for values in stream:
            yield values
            for name, value in values.items():
                flat = value.reshape(-1, value.shape[-1])
                held = sum(len(r) for r in kept.get(name, []))
                if held < rows:
                    pick = rng.choice(len(flat), size=min(len(flat), rows - held, max(rows // 8, 1)), replace=False)
                    kept.setdefault(name, []).append(flat[pick].astype(np.float32))

    peaks = absmax(collect())
    return peaks, {name: np.concatenate(parts) for name, parts in kept.items()}


def activation_absmax(model, names: list[str], batches: Batches) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of the named tensors of an ONNX graph over all batches."""
    return absmax(onnx_activations(model, names, batches))
