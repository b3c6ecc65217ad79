"""How much int8 hurts each Linear layer on its own: SQNR of the layer's output, simulated on calibration activations.

Each layer is judged with fp32 inputs (not the errors of the layers before it), so the ranking says which layers are
sensitive, not which come last. Simulated as ONNX Runtime's QDQ does it: asymmetric per-tensor activations from the
calibration min/max, symmetric per-channel int8 weights. Read from a backend's LinearGraph, so the same numbers rank
the layers of an ONNX graph and of an OpenVINO IR.
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


def _fake_quant_weight_int4(w: np.ndarray, group: int) -> np.ndarray:
    """Symmetric 4-bit weights, one scale per `group` input rows of each output column (MatMulNBits' and NNCF's
    group-wise layout); a last partial group has its own scale."""
    out = np.empty_like(w)
    for start in range(0, w.shape[0], group):
        block = w[start:start + group]
        scale = np.abs(block).max(axis=0, keepdims=True) / 7.0
        scale[scale == 0] = 1.0
        out[start:start + group] = np.clip(np.round(block / scale), -8, 7) * scale
    return out


def graph_sqnr(graph, batches, names: list[str] | None = None, int4_group: int | None = None) -> dict[str, float]:
    """SQNR in dB of each Linear layer's output under int8 (higher is safer), for the layers of a LinearGraph
    (all of them, or those named); with `int4_group`, under 4-bit group-wise weights and float activations instead
    (weight-only)."""
    layers = [layer for layer in graph.linears() if names is None or layer.name in set(names)]
    activations = sorted({layer.activation for layer in layers})
    collected: dict[str, list[np.ndarray]] = {name: [] for name in activations}
    for values in graph.activations(activations, batches):
        for name in activations:
            collected[name].append(values[name].reshape(-1, values[name].shape[-1]))
    signal: dict[str, float] = {}
    for layer in layers:
        x = np.concatenate(collected[layer.activation])
        w = layer.weight.astype(np.float32)
        y = x @ w
        if int4_group:
            noise = y - x @ _fake_quant_weight_int4(w, int4_group)
        else:
            noise = y - _fake_quant_activation(x, float(x.min()), float(x.max())) @ _fake_quant_weight(w)
        signal[layer.name] = float(10 * np.log10((y ** 2).sum() / max((noise ** 2).sum(), 1e-30)))
    return signal


def layer_sqnr(model_path: Path, nodes: list[str], batches) -> dict[str, float]:
    """`graph_sqnr` of the named MatMul nodes of an ONNX graph (what `qdeploy inspect` reports)."""
    from .backends import backend

    return graph_sqnr(backend("onnx").read(model_path), batches, nodes)
