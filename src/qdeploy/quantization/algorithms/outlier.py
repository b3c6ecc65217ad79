"""Outlier-aware mixed precision, one algorithm for every backend, after LLM.int8 (Dettmers et al. 2022): a Linear
layer whose input carries channels beyond a threshold (6.0 there) is where per-tensor int8 breaks, so that layer stays
in float and the rest goes static int8 (ONNX Runtime QDQ on ONNX, NNCF on OpenVINO). The notes name every layer kept
and its largest activation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...calibration.statistics import absmax
from ...errors import ConfigError
from .. import MethodResult, register
from ..backends import Int8Settings, LinearGraph, backend_for


@dataclass(frozen=True)
class Outlier(Int8Settings):
    threshold: float = 6.0  # max |activation| of a layer's input above which the layer stays float
    # The output projection (a language model's lm_head) stays float whatever its input, as in LLM.int8's OPT
    # checkpoints: it is the widest layer and the last, where an error reaches every next-token probability.
    lm_head_float: bool = False

    def __post_init__(self):
        if self.threshold <= 0:
            raise ConfigError(f"outlier threshold must be positive, got {self.threshold}")


@dataclass(frozen=True)
class NncfOutlier(Outlier):
    """nncf-outlier: the same recipe with the same defaults, on OpenVINO."""


def outlier_layers(graph: LinearGraph, batches, threshold: float, always: frozenset[str] = frozenset()):
    """The Linear layers whose input exceeds `threshold` somewhere (and those in `always`), largest first, each with
    the reason it stays float; the number of Linear layers; the notes."""
    layers = graph.linears()
    peaks = absmax(graph.activations(sorted({layer.activation for layer in layers}), batches))
    largest = {layer.name: float(peaks[layer.activation].max()) for layer in layers}
    kept = sorted((layer for layer in layers if largest[layer.name] > threshold or layer.name in always),
                  key=lambda l: -largest[l.name])
    notes = [f"threshold {threshold}: {len(kept)} of {len(layers)} Linear layers kept in float, "
             f"{len(layers) - len(kept)} int8" + (f" ({len(always)} output layer(s) float by lm_head_float)"
                                                  if always else "")]
    notes += [f"float: {layer.name} (max |input| {largest[layer.name]:.1f}, "
              f"{int((peaks[layer.activation] > threshold).sum())} channels above)" for layer in kept]
    reasons = {layer.name: "output layer kept float (lm_head_float)" if layer.name in always else
               f"input peaks at {largest[layer.name]:.1f}, above the outlier threshold {threshold}" for layer in kept}
    return reasons, len(layers), notes


def outlier(parent, config: Outlier, calibration, target: Path, ctx) -> MethodResult:
    backend = backend_for(parent)
    graph = backend.read(parent.model_path)
    ctx.progress(f"outlier: activation statistics on {calibration.samples} samples")
    head = frozenset(backend.head_layers(parent.model_path)) if config.lm_head_float else frozenset()
    reasons, total, notes = outlier_layers(graph, calibration.batches(ctx.tokenizer, list(parent.manifest.inputs)),
                                        config.threshold, head)
    if config.lm_head_float and not head:
        notes.append("lm_head_float: the output is not produced by a Linear layer with a constant weight (a tied "
                     "lm_head read through a Transpose of the embedding table), so it is float already")
    kept = list(reasons)
    ctx.progress(f"outlier: {len(kept)} of {total} layers stay float (threshold {config.threshold})")
    if len(kept) == total:  # nothing left to quantize: the float graph is the answer
        graph.save(target / backend.model_file)
    else:
        backend.int8(parent.model_path, kept, target, calibration, ctx, parent, config)
    return MethodResult(backend.model_file, "int8-mixed", backend.runtime_config(), notes, reasons)


TEXT = "outlier-aware mixed precision: Linear layers whose inputs exceed a threshold stay float, the rest "
register("outlier", Outlier, ("onnx", "openvino"), needs_calibration=True,
         description=TEXT + "static int8 (ONNX Runtime QDQ on onnx, NNCF on openvino; alias nncf-outlier)")(outlier)
register("nncf-outlier", NncfOutlier, "openvino", needs_calibration=True,
         description="alias of outlier on openvino: " + TEXT + "NNCF int8")(outlier)
