"""Accuracy-aware fallback, one algorithm for every backend: static int8 everywhere, then the most sensitive layers
back to float, a group at a time, until the measured quality loss is within the tolerance (as Intel's int8 BART keeps
40 of 193 Linear layers float).

With mode=weight-int4 the same search runs over 4-bit group-wise weights with float activations, the weight-only
recipe of a language model, and the notes name the layers that fell back (as Intel's int8 BART card says "40/193").

Layers are ranked by simulated SQNR (sensitivity.py) on the backend's view of the graph; each candidate is really
quantized by the backend (ONNX Runtime QDQ on ONNX, NNCF on OpenVINO) and really evaluated on the user's data with the
registered metric, through the format's own runtime. Stops at the first candidate within tolerance, or with the best
one found when the candidates or the time budget run out, and says so in the notes.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from ...artifact import Artifact, Manifest
from ...errors import ConfigError, QdeployError
from .. import MethodResult, register
from ..backends import Int8Settings, backend_for
from ..sensitivity import graph_sqnr
from .weight_int4 import WeightInt4

SCHEME = {"static": "static int8", "dynamic": "dynamic int8", "weight-int4": "4-bit weights"}
RANKING_BATCHES = 4  # calibration batches the SQNR ranking replays: enough to order layers, cheap to hold
GRAPH_SUFFIXES = (".onnx", ".data", ".xml", ".bin")  # a model's graph and weight files, whichever the format


@dataclass(frozen=True)
class AccuracyTarget:
    """What an accuracy-aware method aims at (auto and its alias): checked when the config is made, before exports."""
    NAME: ClassVar[str] = "auto"
    eval: str = ""  # evaluation data for the metric (required)
    metric: str = ""  # default: accuracy for text-classification, stsb for feature-extraction
    tolerance: float = 0.01  # the largest quality loss accepted, in the metric's units (0.01 = one accuracy point)
    relative: bool = False  # tolerance as a fraction of the fp32 value instead

    def __post_init__(self):
        if not self.eval:
            raise ConfigError(f"{self.NAME} needs evaluation data: --option eval=PATH (the metric's file)")
        if self.metric:
            from ... import evaluation

            evaluation.metric(self.metric)  # an unknown name is a ConfigError naming the known ones


@dataclass(frozen=True)
class Auto(AccuracyTarget, Int8Settings):
    # the scheme of the quantized layers (none: static int8; dynamic: ONNX Runtime's only; weight-int4: 4-bit weights)
    mode: Literal["static", "dynamic", "weight-int4"] | None = None
    time_budget_s: float = 900.0
    group_size: int = 32  # weight-int4: weights sharing one scale

    def check_format(self, fmt: str) -> None:
        if self.mode == "dynamic" and fmt != "onnx":
            raise ConfigError(f"mode: not a setting of the {fmt} backend: dynamic int8 is ONNX Runtime's "
                              "(static or weight-int4 work on both)")
        if self.mode == "weight-int4":
            WeightInt4(group_size=self.group_size).check_format(fmt)

    def __post_init__(self):
        super().__post_init__()
        if self.time_budget_s <= 0:
            raise ConfigError(f"{self.NAME} time_budget_s must be positive, got {self.time_budget_s}")
        if self.mode == "weight-int4" and any(getattr(self, k) is not None for k in Int8Settings.FORMAT_OPTIONS):
            raise ConfigError(f"{self.NAME}: the int8 settings ({', '.join(Int8Settings.FORMAT_OPTIONS)}) do not "
                              "apply to mode=weight-int4")


@dataclass(frozen=True)
class NncfAuto(Auto):
    """nncf-auto: the same fallback on OpenVINO. Its max_iterations (rounds of NNCF's restorer) has no counterpart:
    the candidates and time_budget_s bound the search."""
    NAME: ClassVar[str] = "nncf-auto"


DEFAULT_METRIC = {"text-classification": "accuracy", "feature-extraction": "stsb"}


def evaluation_target(parent: Artifact, metric_name: str, eval_path: str, method: str):
    """The metric and its data file for an accuracy-aware method, checked before any quantization starts."""
    from ... import evaluation

    metric_name = metric_name or DEFAULT_METRIC.get(parent.manifest.task, "")
    metric = evaluation.metric(metric_name)
    if parent.manifest.task not in metric.tasks:
        raise ConfigError(f"{method}: metric {metric_name} does not apply to task {parent.manifest.task}")
    if not eval_path:
        raise ConfigError(f"{method} needs evaluation data: --option eval=PATH (the metric's file)")
    data = evaluation.check_path(eval_path, metric_name)
    if metric.read:
        metric.read(data)
    return metric_name, metric, data


def _candidates(count: int) -> list[int]:
    """How many layers to keep float at each step: 0, 1, 2, 4, 8, ... then all but none."""
    steps, k = [0], 1
    while k < count:
        steps.append(k)
        k *= 2
    return steps + [count]


def auto(parent: Artifact, config: Auto, calibration, target: Path, ctx) -> MethodResult:
    from ... import evaluation, runtimes

    backend = backend_for(parent)
    name = config.NAME
    mode = config.mode or "static"
    metric_name, metric, data = evaluation_target(parent, config.metric, config.eval, name)
    from ...runtimes.decoding import DecoderFeeds

    # Calibration feeds a decoder whole graphs' inputs; a metric takes text tokens and builds those itself.
    tokenizer = ctx.tokenizer.text_tokenizer if isinstance(ctx.tokenizer, DecoderFeeds) else ctx.tokenizer
    eval_ctx = evaluation.EvalContext(tokenizer, list(parent.manifest.inputs))

    def score(model_path: Path) -> float:
        # The format's settings for a quantized model, over the parent's own (a decoder's cache layout travels there)
        settings = backend.load_settings(model_path, {**parent.manifest.runtime_config, **backend.runtime_config()})
        manifest = Manifest(format=backend.format, model_file=model_path.name, precision="int8",
                            task=parent.manifest.task, source=parent.manifest.source, runtime_config=settings,
                            inputs=list(parent.manifest.inputs), outputs=list(parent.manifest.outputs))
        session = runtimes.load(Artifact(model_path.parent, manifest), backend.runtime)
        return metric.evaluate(session, eval_ctx, data).value

    started = time.monotonic()
    reference = score(parent.model_path)
    sign = 1.0 if metric.higher_is_better else -1.0  # a loss is positive whichever way the metric points
    allowed = config.tolerance * (abs(reference) if config.relative else 1.0)
    graph = backend.read(parent.model_path)
    layers = [layer.name for layer in graph.linears()]
    if not layers:
        raise QdeployError(f"{parent.directory}: no Linear layer (MatMul with a constant weight); nothing to quantize")
    ctx.progress(f"{name}: ranking {len(layers)} layers by {mode} sensitivity")
    batches = itertools.islice(calibration.batches(ctx.tokenizer, list(parent.manifest.inputs)), RANKING_BATCHES)
    sqnr = graph_sqnr(graph, batches, int4_group=config.group_size if mode == "weight-int4" else None)
    del graph  # trials read their own copies: the float graph need not stay in memory beside them
    ranked = sorted(layers, key=lambda n: sqnr[n])
    tried: list[tuple[int, float]] = []
    best: tuple[float, int, Path] | None = None
    with tempfile.TemporaryDirectory(prefix="qdeploy-auto-") as tmp:
        def trial(k: int) -> tuple[int, float, Path]:
            """Quantize with the k most sensitive layers float, and score it (a task of its own on a Ray worker)."""
            floats = ranked[:k]
            source_dir, out = Path(tmp) / f"k{k}" / "fp32", Path(tmp) / f"k{k}" / "out"
            source_dir.mkdir(parents=True)
            out.mkdir()
            # ONNX Runtime's quantizers write shape-inferred copies beside their input: each trial reads its own copy
            # of the graph, so trials running side by side never overwrite each other's.
            for path in parent.model_path.parent.iterdir():
                if path.suffix in GRAPH_SUFFIXES:
                    shutil.copy2(path, source_dir / path.name)
            source = source_dir / parent.model_path.name
            if k == len(ranked):
                backend.read(source).save(out / backend.model_file)
            elif mode == "dynamic":
                backend.dynamic_int8(source, floats, out, config)
            elif mode == "weight-int4":
                backend.weight_int4(source, WeightInt4(group_size=config.group_size), out, calibration, ctx, parent,
                                    exclude=floats)
            else:
                backend.int8(source, floats, out, calibration, ctx, parent, config)
            return k, score(out / backend.model_file), out

        # One candidate at a time, stopping at the first within tolerance; on a Ray worker, a wave of candidates runs
        # as parallel tasks on its node and the fewest float layers within tolerance in the wave wins.
        candidates = _candidates(len(ranked))
        width = max(2, os.cpu_count() or 2) if ctx.parallel else 1
        for start in range(0, len(candidates), width):
            if tried and time.monotonic() - started > config.time_budget_s:
                break
            for k, value, candidate in ctx.map(trial, candidates[start:start + width]):
                loss = sign * (reference - value)
                tried.append((k, value))
                ctx.progress(f"{name}: {k} layers float -> {metric_name} {value:.4f} (loss {loss:+.4f})")
                # a wave is in order of k: its first candidate within tolerance has the fewest float layers
                if best is None or (best[0] > allowed and (loss < best[0] or loss <= allowed)):
                    best = (loss, k, candidate)
            if best[0] <= allowed:
                break
        loss, k, chosen = best
        for path in chosen.iterdir():  # the graph and, on OpenVINO, its weights file
            shutil.copy2(path, target / path.name)
    record = {"metric": metric_name, "tolerance": config.tolerance, "relative": config.relative,
              "met": bool(loss <= allowed), "fp32": float(reference), "value": float(reference - sign * loss),
              "mode": mode, "float_layers": k, "layers": len(ranked), "parallel": width,
              "tried": [{"float_layers": n, "value": float(v)} for n, v in tried]}
    notes = _notes(record) + [f"float: {n} (SQNR {sqnr[n]:.1f} dB)" for n in ranked[:k]]
    reasons = {n: f"sensitive: simulated SQNR {sqnr[n]:.1f} dB, among the {k} layers {name} kept float to stay "
                  f"within the tolerance" for n in ranked[:k]}
    return MethodResult(backend.model_file, "int4-mixed" if mode == "weight-int4" else "int8-mixed",
                        backend.runtime_config(), notes, reasons, record=record)


def _notes(r: dict) -> list[str]:
    """The search's record (MethodResult.record, the manifest's method["result"]) in words."""
    notes = [(f"tolerance {r['tolerance']} met" if r["met"] else f"tolerance {r['tolerance']} NOT met; best found") +
             f": {r['metric']} {r['value']:.4f} vs fp32 {r['fp32']:.4f} with {r['float_layers']} of {r['layers']} "
             f"Linear layers in float ({SCHEME[r['mode']]} for the rest)",
             "tried (layers float -> value): " + ", ".join(f"{t['float_layers']} -> {t['value']:.4f}"
                                                           for t in r["tried"])]
    if r["parallel"] > 1:
        notes.append(f"candidates evaluated {r['parallel']} at a time as parallel Ray tasks on one node")
    return notes


TEXT = ("accuracy-aware fallback: static int8 (or mode=weight-int4: 4-bit weights), then the most sensitive layers (by "
        "simulated SQNR) back to float until the quality loss on eval=PATH is within a tolerance")
register("auto", Auto, ("onnx", "openvino"), needs_calibration=True,
         description=TEXT + " (ONNX Runtime QDQ, or dynamic with mode=dynamic, on onnx; NNCF on openvino; "
                            "alias nncf-auto)")(auto)
register("nncf-auto", NncfAuto, "openvino", needs_calibration=True,
         description="alias of auto on openvino: " + TEXT + " (NNCF int8)")(auto)
