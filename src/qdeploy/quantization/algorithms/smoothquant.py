"""SmoothQuant (Xiao et al. 2022), one algorithm for every backend: move activation outliers into the weights, then
static int8 (ONNX Runtime QDQ on ONNX, NNCF on OpenVINO).

For each group of Linear layers that read the same activation X, per input channel j:
    s_j = max|X_j|^alpha / max|W_j|^(1-alpha),   X' = X / s,   W' = diag(s) W.
The product is unchanged in exact arithmetic; X' has fewer outlier channels, so per-tensor int8 represents it better.
With alpha "search", each group takes the alpha of ALPHA_GRID that minimizes the int8 error of its own outputs,
replayed on calibration activations (X W against fake-quantized X' and W'), since one alpha does not suit both the
attention inputs and the feed-forward ones.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ...calibration.statistics import absmax, absmax_and_rows
from ...errors import ConfigError
from .. import MethodResult, register
from ..backends import Int8Settings, Linear, LinearGraph, backend_for
from ..sensitivity import _fake_quant_activation, _fake_quant_weight

ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SEARCH_ROWS = 1024  # token rows per activation replayed by the search: a few calibration batches' worth
ALPHA = float | Literal["search"]


@dataclass(frozen=True)
class SmoothQuant(Int8Settings):
    # Migration strength: 0 keeps activations as they are, 1 moves all their range to weights; "search" picks per
    # layer group from smoothquant.ALPHA_GRID on the calibration set.
    alpha: ALPHA = 0.5
    # The down-projection reads the activation function's output: int8 there costs all-MiniLM-L6-v2 2.1 STS points
    # even smoothed (79.8-79.9 vs 82.03), float there 0.2 (81.81). True gives every Linear layer int8 (W8A8).
    ffn_down_int8: bool = False

    def __post_init__(self):
        if self.alpha != "search" and not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"smoothquant alpha must be within [0, 1] or search, got {self.alpha}")


@dataclass(frozen=True)
class NncfSmoothQuant(SmoothQuant):
    ffn_down_int8: bool = True  # nncf-smoothquant has always quantized every Linear layer


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


def smoothquant(parent, config: SmoothQuant, calibration, target: Path, ctx) -> MethodResult:
    backend = backend_for(parent)
    graph = backend.read(parent.model_path)
    ctx.progress(f"smoothquant: migrating activation ranges (alpha {config.alpha})")
    scales, chosen = migration_scales(graph, calibration.batches(ctx.tokenizer, list(parent.manifest.inputs)),
                                      config.alpha)
    groups = graph.groups()
    layers = sum(len(g) for g in groups.values())
    per_group = [f"alpha {alpha}: {', '.join(layer.name for layer in groups[act])}" for act, alpha in chosen.items()] \
        if config.alpha == "search" else []
    graph.smooth(scales)
    kept = [] if config.ffn_down_int8 else sorted(backend.ffn_layers(parent.model_path, down_only=True))
    with tempfile.TemporaryDirectory(prefix="qdeploy-sq-") as tmp:
        smoothed = Path(tmp) / ("smoothed" + Path(backend.model_file).suffix)
        graph.save(smoothed)
        backend.int8(smoothed, kept, target, calibration, ctx, parent, config)
    values = sorted(set(chosen.values()))
    notes = [f"alpha {config.alpha}" + (f" (per group: {', '.join(f'{a:g}' for a in values)}; median "
                                         f"{float(np.median(list(chosen.values()))):g})" if config.alpha == "search"
                                        else "") + f": {len(scales)} activation groups smoothed; "
             + (f"all {layers} Linear layers int8" if not kept else
                f"{layers - len(kept)} of {layers} Linear layers int8, {len(kept)} feed-forward down-projections "
                "float (ffn_down_int8=false)")]
    return MethodResult(backend.model_file, "int8", backend.runtime_config(), notes + per_group,
                        {n: "feed-forward down-projection: reads the activation function's output (ffn_down_int8="
                            "false)" for n in kept},
                        (f"SmoothQuant: {len(scales)} activations divided by per-channel scales folded into the "
                         f"weights reading them (alpha {config.alpha})",))


TEXT = "SmoothQuant (alpha fixed or searched per layer): activation outliers moved into weights, then static int8 "
register("smoothquant", SmoothQuant, ("onnx", "openvino"), needs_calibration=True,
         description=TEXT + "of the Linear layers (feed-forward down-projections float unless ffn_down_int8); "
                            "ONNX Runtime QDQ on onnx, NNCF on openvino (alias nncf-smoothquant)")(smoothquant)
register("nncf-smoothquant", NncfSmoothQuant, "openvino", needs_calibration=True,
         description="alias of smoothquant on openvino with ffn_down_int8=true: " + TEXT + "(NNCF) of every Linear "
                                                                                         "layer")(smoothquant)
