"""How much int8 hurts each Linear layer on its own: SQNR of the layer's output, simulated on calibration activations.

Each layer is judged with fp32 inputs (not the errors of the layers before it), so the ranking says which layers are
sensitive, not which come last. Simulated as ONNX Runtime's QDQ does it: asymmetric per-tensor activations from the
calibration min/max, symmetric per-channel int8 weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _fake_quant_activation(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def layer_sqnr(model_path: Path, nodes: list[str], batches) -> dict[str, float]:
    """SQNR in dB of each weight MatMul's output under int8 (higher is safer)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    weights = {init.name: init for init in model.graph.initializer}
    chosen = {n.name: n for n in model.graph.node if n.name in set(nodes)}
    act_names = sorted({n.input[0] for n in chosen.values()})
    existing = {o.name for o in model.graph.output}
    for name in act_names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in act_names}
    for batch in batches:
        for name, value in zip(act_names, session.run(act_names, {k: batch[k] for k in feeds})):
            collected[name].append(value.reshape(-1, value.shape[-1]))
    signal: dict[str, float] = {}
    for name, node in chosen.items():
        x = np.concatenate(collected[node.input[0]])
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        y = x @ w
        noise = y - _fake_quant_activation(x, float(x.min()), float(x.max())) @ _fake_quant_weight(w)
        signal[name] = float(10 * np.log10((y ** 2).sum() / max((noise ** 2).sum(), 1e-30)))
    return signal
