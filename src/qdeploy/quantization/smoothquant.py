"""SmoothQuant (Xiao et al. 2022), written once for every backend: move activation outliers into the weights.

For each group of Linear layers that read the same activation X, per input channel j:
    s_j = max|X_j|^alpha / max|W_j|^(1-alpha),   X' = X / s,   W' = diag(s) W.
The product is unchanged in exact arithmetic; X' has fewer outlier channels, so per-tensor int8 represents it better.
With alpha "search", each group takes the alpha of ALPHA_GRID that minimizes the int8 error of its own outputs,
replayed on calibration activations (X W against fake-quantized X' and W'), since one alpha does not suit both the
attention inputs and the feed-forward ones.
"""
from __future__ import annotations

import numpy as np

from ..calibration.statistics import absmax, absmax_and_rows
from .linear_graph import LinearGraph, Linear
from .sensitivity import _fake_quant_activation, _fake_quant_weight

ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SEARCH_ROWS = 1024  # token rows per activation replayed by the search: a few calibration batches' worth


def _scales(x_max: np.ndarray, layers: list[Linear], alpha: float) -> np.ndarray:
    w_max = np.max([np.abs(layer.weight).max(axis=1) for layer in layers], axis=0)
    scale = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
    return np.clip(scale, 1e-2, 1e2).astype(np.float32)


def _int8_error(rows: np.ndarray, layers: list[Linear], scale: np.ndarray) -> float:
    """Squared error of the group's outputs when X / s and diag(s) W are quantized as the int8 recipe does."""
    x = rows / scale
    xq = _fake_quant_activation(x, float(x.min()), float(x.max()))
    return float(sum(((rows @ layer.weight - xq @ _fake_quant_weight(layer.weight * scale[:, None])) ** 2).sum()
                     for layer in layers))


def migration_scales(graph: LinearGraph, batches, alpha: float | str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-activation smoothing scales and the alpha each group got."""
    groups = graph.groups()
    stream = graph.activations(list(groups), batches)
    if alpha != "search":
        peaks = absmax(stream)
        return ({act: _scales(peaks[act], layers, float(alpha)) for act, layers in groups.items()},
                {act: float(alpha) for act in groups})
    peaks, rows = absmax_and_rows(stream, SEARCH_ROWS)
    scales, chosen = {}, {}
    for act, layers in groups.items():
        errors = {a: _int8_error(rows[act], layers, _scales(peaks[act], layers, a)) for a in ALPHA_GRID}
        chosen[act] = min(errors, key=errors.get)
        scales[act] = _scales(peaks[act], layers, chosen[act])
    return scales, chosen


def describe_alphas(graph: LinearGraph, chosen: dict[str, float]) -> list[str]:
    """One note per layer group: the alpha it got and the layers it covers."""
    groups = graph.groups()
    return [f"alpha {alpha}: {', '.join(layer.name for layer in groups[act])}" for act, alpha in chosen.items()]
