"""Quantization-aware training: NNCF's PyTorch backend puts fake quantizers into the fp32 model, initialized on the
calibration source (so step 0 is post-training static int8 of the same scheme), the model is fine-tuned with them
in place, and the result is exported as an ONNX QDQ graph (`qat`) or an OpenVINO int8 IR (`nncf-qat`).

One fine-tune serves both formats. The registry makes one artifact per method, so the trained fake-quantized model
(its state dict and NNCF's quantizer config) is cached beside the artifacts under `.qat-cache/KEY`, KEY a hash of the
source weights, the options, the calibration and the library versions; a file lock lets a concurrent second format
wait and reuse it. Each format is then exported from the same PyTorch model, as NNCF intends (QuantizeLinear /
DequantizeLinear pairs for ONNX, FakeQuantize for OpenVINO), rather than OpenVINO reading the ONNX graph: both are
checked against that one model, never against each other.

`steps=0` skips the fine-tune: the post-training counterpart of the same scheme, for a plan to put beside QAT.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..artifact import Artifact
from ..config import to_dict
from ..errors import ConfigError, InputError, UnsupportedError
from ..machine import has_vnni
from . import MethodResult, register
from .backends.onnx import ONNX
from .backends.openvino import OPENVINO
from .qat_export import export, quantizers, validate, validation_note
from .qat_train import PROBE_ROWS, Plan, TrainingData, fine_tune, task_loss

# NNCF compiles its CPU extension on first use and gives up after 60 s by default: on 2 busy cores the compile took
# longer and the fresh-clone test failed with a load timeout. A user's own setting wins.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
CACHE_DIR = ".qat-cache"
CACHE_FORMAT = 1  # raise when what a cached fine-tune holds, or how it is made, changes
# NNCF's quantization schemes, as (model type, per-channel weights, what they quantize):
# w8a8: the transformer scheme (Linear layers and attention inputs, SmoothQuant, mixed preset), as nncf-ptq.
# w8a8-per-tensor: the same with one scale per weight tensor (what some int8 hardware takes). SmoothQuant moves the
#   activations' outlier channels into weight columns, and one scale for the whole tensor then fits them badly.
# w8a8-all: NNCF's generic defaults, every operator it can quantize (LayerNorm and GELU outputs, residual sums,
#   embeddings, attention output), symmetric activations.
SCHEMES = {"w8a8": ("TRANSFORMER", True, "Linear layers and attention inputs"),
           "w8a8-per-tensor": ("TRANSFORMER", False, "Linear layers and attention inputs, per-tensor weights"),
           "w8a8-all": (None, True, "every operator")}
TASKS = ("text-classification", "feature-extraction")


@dataclass(frozen=True)
class Qat:
    train: str = ""  # training file (TSV/CSV/JSONL/Parquet); not needed with steps=0
    text_column: str = ""  # default: text, sentence, sentence1 or content, else the first column
    label_column: str = ""  # default: label, when the file has it
    steps: int | None = None  # None: from epochs; 0: no fine-tune (post-training int8 of the same scheme)
    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 2e-5
    range_lr: float | None = None  # learning rate of the quantizer ranges; None: lr
    warmup: float = 0.1  # share of the steps with a rising learning rate (then linear decay to 0)
    seed: int = 0
    max_length: int = 64
    freeze_after: int | None = None  # steps after which the quantizer ranges stop learning
    time_budget_s: float = 3600.0
    eval: str = ""  # evaluation data for the metric: the best state by it is kept (the untrained start included)
    holdout: int = 0  # instead of eval: this many training rows (drawn by seed) left out and scored by accuracy
    metric: str = ""  # default: accuracy for text-classification, stsb for feature-extraction
    eval_every: int = 50
    scheme: Literal["w8a8", "w8a8-per-tensor", "w8a8-all"] = "w8a8"
    distill: bool | None = None  # learn the fp32 model's outputs; None: for feature-extraction (classifiers: labels)
    label_weight: float = 0.0  # with distill on a classifier: add this times the labels' cross-entropy
    reduce_range: bool | None = None  # 7-bit weights; None: when the CPU lacks VNNI (as ort-static)

    def __post_init__(self):
        for name in ("batch_size", "max_length", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"qat {name} must be at least 1, got {getattr(self, name)}")
        for name in ("steps", "freeze_after", "holdout", "label_weight"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"qat {name} must not be negative, got {getattr(self, name)}")
        bad_range_lr = self.range_lr is not None and self.range_lr <= 0
        if self.epochs < 0 or self.lr <= 0 or bad_range_lr or self.time_budget_s <= 0 or not 0 <= self.warmup < 1:
            raise ConfigError("qat needs epochs >= 0, lr and range_lr > 0, time_budget_s > 0 and 0 <= warmup < 1")
        if self.holdout and (self.eval or self.metric not in ("", "accuracy")):
            raise ConfigError("qat chooses the best state on eval=PATH or on holdout=N training rows (by accuracy), "
                              "not both")


@dataclass(frozen=True)
class NncfQat(Qat):
    """The same options; the artifact is OpenVINO IR."""


@dataclass
class Trained:
    student: Any  # the fake-quantized PyTorch model (NNCF hooks in place), trained
    teacher: Any  # the fp32 model it started from
    notes: list[str]
    record: dict  # the fine-tune's summary (losses, scores by step) and whether it came from the cache


def _load_teacher(parent: Artifact):
    from .. import models
    from ..tasks import load_model

    source = parent.manifest.source
    path = Path(source.get("path", ""))
    if not source.get("path") or not path.is_dir():
        raise InputError(f"qat fine-tunes the PyTorch model {parent.directory} was exported from, and its source "
                         f"{source.get('path') or source.get('model')!r} is not reachable here")
    found = models.resolve(str(path), allow_pickle=bool(source.get("pickle")))
    if source.get("sha256") and found.sha256 != source["sha256"]:
        raise InputError(f"the weights in {path} changed since {parent.directory} was exported (sha256 "
                         f"{found.sha256[:12]}…, the artifact records {source['sha256'][:12]}…); export again")
    return load_model(path, parent.manifest.task, bool(parent.manifest.runtime_config.get("trust_remote_code")),
                      pickle=bool(source.get("pickle")))


def _insert_quantizers(teacher, config: Qat, calibration, ctx, input_names) -> tuple[Any, list[str]]:
    import nncf
    import torch
    from nncf.torch.quantization.layers import SymmetricQuantizer

    class Batches:  # re-iterable and sized: NNCF walks the calibration data once per statistics pass
        def __iter__(self):
            return calibration.batches(ctx.tokenizer, input_names)

        def __len__(self):
            return calibration.batch_count()

    dataset = nncf.Dataset(Batches(), lambda batch: {k: torch.from_numpy(v) for k, v in batch.items()})
    model_type, per_channel, what = SCHEMES[config.scheme]
    advanced = None
    if not per_channel:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

        advanced = AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(per_channel=False))
    ctx.progress(f"qat: inserting fake quantizers ({config.scheme}) and calibrating on {calibration.samples} samples "
                 "(NNCF compiles its CPU extension on first use, about a minute)")
    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws its own progress bars; qdeploy never prints
        student = nncf.quantize(teacher, dataset, model_type=model_type and getattr(nncf.ModelType, model_type),
                                subset_size=calibration.batch_count(), advanced_parameters=advanced)
    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    narrowed = 0
    for (hook_type, op_name, port), module in quantizers(student) if reduce_range else ():
        # Linear weights (input port 1) at half range, NNCF's overflow fix: s8 weights x u8 activations overflow
        # the 16-bit sums of AVX2 and AVX-512 (no VNNI) int8 kernels; measured on MiniLM's exported graph, ONNX
        # Runtime's int8 kernels were 6x further from the QDQ model with full-range weights (0.027 vs 0.0044).
        if hook_type == "pre_hooks" and port == 1 and op_name.split("/")[-2] == "linear" and \
                isinstance(module, SymmetricQuantizer) and module.signed:
            # [-64, 63] (not narrow): exported as int8 QDQ; kept in nncf.torch.get_config for the cache.
            module._half_range = module._qspec.half_range = True
            module._narrow_range = module._qspec.narrow_range = False
            module.set_levels()
            narrowed += 1
    count = len(quantizers(student))
    notes = [f"scheme {config.scheme}: {count} fake quantizers from NNCF's PyTorch backend (model type "
             f"{(model_type or 'none').lower()}: {what}), ranges from {calibration.samples} "
             f"calibration samples; step 0 is post-training static int8 of this scheme",
             f"{narrowed} Linear weights 7-bit (reduce_range: " + (
                 "CPU lacks VNNI" if config.reduce_range is None else "asked") + ")" if reduce_range
             else "weights 8-bit (full range)"]
    return student, notes


def _cache_key(parent: Artifact, config: Qat, calibration) -> str:
    from importlib.metadata import version

    material = {"format": CACHE_FORMAT, "source": parent.manifest.source.get("sha256"), "task": parent.manifest.task,
                "config": to_dict(config), "calibration": to_dict(calibration),
                "reduce_range": (not has_vnni()) if config.reduce_range is None else config.reduce_range,
                "versions": {lib: version(lib) for lib in ("nncf", "torch", "transformers")}}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(root: Path, key: str):
    """One fine-tune at a time per key (a concurrent second format waits, then reuses it)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): at worst both formats train
        yield
        return
    with open(root / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _save(root: Path, key: str, student, summary: dict) -> None:
    import nncf
    import torch

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        torch.save(student.state_dict(), tmp / "state.pt")
        (tmp / "nncf.json").write_text(json.dumps(nncf.torch.get_config(student)), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(summary, default=str), encoding="utf-8")
        os.replace(tmp, root / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(directory: Path, teacher):
    import nncf
    import torch

    student = nncf.torch.load_from_config(copy.deepcopy(teacher),
                                          json.loads((directory / "nncf.json").read_text(encoding="utf-8")))
    student.load_state_dict(torch.load(directory / "state.pt", weights_only=True))
    return student.eval(), json.loads((directory / "summary.json").read_text(encoding="utf-8"))


class _TorchSession:
    """A model in memory as a runtime session, so registered metrics can score it during training."""

    def __init__(self, model, output_names):
        self.model, self.output_names = model, output_names

    def run(self, inputs):
        import torch

        with torch.no_grad():
            out = self.model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
        return {name: out[name].float().numpy() for name in self.output_names}


def _training(parent, config: Qat, ctx, input_names, output_names):
    """Check the training (and evaluation) data now, before any long work; return `run(teacher, student)`."""
    from .. import evaluation
    from .algorithms.auto import evaluation_target

    data = TrainingData.open(config.train, config.text_column, config.label_column)
    # Embeddings learn from the fp32 model's; a classifier from its labels unless told to distill.
    distill = parent.manifest.task == "feature-extraction" if config.distill is None else config.distill
    if config.label_weight and not (distill and data.label_column and parent.manifest.task == "text-classification"):
        raise ConfigError("qat label_weight adds the labels' cross-entropy to distillation: it needs distill=true, "
                          "a text-classification model and a label column")
    loss = task_loss(parent.manifest.task, distill, data.label_column is not None, config.label_weight)
    held: list = []
    if config.holdout:
        if parent.manifest.task != "text-classification" or data.label_column is None:
            raise ConfigError("qat holdout=N scores held-out training rows by accuracy: it needs a "
                              "text-classification model and a label column (otherwise give eval=PATH)")
        data, held = data.hold_out(config.holdout, config.seed)
    rows = data.count()  # one streamed pass: every label is parsed before the model is even loaded
    steps = config.steps if config.steps is not None else math.ceil(config.epochs * rows / config.batch_size)
    sign, metric_name, metric, eval_path = 1.0, "", None, None
    if config.eval:
        metric_name, metric, eval_path = evaluation_target(parent, config.metric, config.eval, "qat")
    elif held:
        metric_name, metric = "accuracy", evaluation.metric("accuracy")
    if metric:
        sign = 1.0 if metric.higher_is_better else -1.0
        eval_ctx = evaluation.EvalContext(ctx.tokenizer, list(input_names))

    def encode(texts):
        enc = ctx.tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
        return {name: enc[name] for name in input_names}

    plan = Plan(steps, config.batch_size, config.lr, config.range_lr or config.lr, config.seed,
                int(config.warmup * steps), config.freeze_after, config.time_budget_s, config.eval_every, distill)

    def run(teacher, student) -> dict:
        ctx.progress(f"qat: fine-tuning {steps} steps of {config.batch_size} ({rows} training rows"
                     + (f", {len(held)} held out)" if held else ")"))
        quantizer_params = lambda: [p for _, q in quantizers(student) for p in q.parameters()]
        with tempfile.TemporaryDirectory(prefix="qdeploy-holdout-") as tmp:
            path = eval_path
            if held:  # the metric reads a file: the held-out rows as one, for the fine-tune's duration
                path = Path(tmp) / "holdout.jsonl"
                path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in held),
                                encoding="utf-8")
            evaluate = None if metric is None else lambda model: sign * metric.evaluate(
                _TorchSession(model, output_names), eval_ctx, path).value
            summary = fine_tune(student, teacher, data, plan, encode, loss, quantizer_params, evaluate,
                                ctx.progress)
        loss_name = "cross-entropy" if not distill else "distillation" + (
            f" + {config.label_weight:g} x label cross-entropy" if config.label_weight else "")
        return {**summary.to_dict(), "rows": rows, "loss": loss_name, "metric": metric_name, "sign": sign}

    return run


def _training_notes(config: Qat, s: dict) -> list[str]:
    if not s:
        return ["no fine-tune (steps=0): post-training static int8 of the same scheme"]
    notes = [f"fine-tuned {s['steps_run']} of {s['steps_planned']} steps ({s['samples']} samples, "
             f"{s['samples'] / max(s['rows'], 1):.2f} epochs of {s['rows']} rows) in {s['seconds']:.0f} s: batch "
             f"{config.batch_size}, lr {config.lr:g} (ranges {config.range_lr or config.lr:g}), seed {config.seed}, "
             f"max_length {config.max_length}, {s['loss']} loss; loss on {min(PROBE_ROWS, s['rows'])} fixed training "
             f"rows {s['probe_loss_before']:.4f} -> {s['probe_loss_after']:.4f} (training batches "
             f"{s['first_losses']:.4f} -> {s['last_losses']:.4f})"]
    if s["stopped_by_budget"]:
        notes.append(f"stopped by the time budget ({config.time_budget_s:g} s)")
    if s["frozen_at"] is not None:
        notes.append(f"quantizer ranges frozen after step {s['frozen_at']}")
    if s["evals"]:
        values = {step: s["sign"] * value for step, value in s["evals"]}
        scored = config.eval or f"{config.holdout} held-out training rows"
        notes.append(f"{s['metric']} on {scored}: step 0 (post-training) {values[0]:.4f}, kept step "
                     f"{s['best_step']} ({values[s['best_step']]:.4f}); by step: "
                     + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return notes


def fine_tuned(parent: Artifact, config: Qat, calibration, ctx) -> Trained:
    """The trained fake-quantized model for `config`: from the cache, or made (and cached) now."""
    from ..tasks import task

    if parent.manifest.task not in TASKS:
        raise UnsupportedError(f"qat supports {', '.join(TASKS)}, not {parent.manifest.task}")
    input_names, output_names = list(parent.manifest.inputs), list(task(parent.manifest.task).outputs)
    train = None if config.steps == 0 else _training(parent, config, ctx, input_names, output_names)
    ctx.progress("qat: loading the fp32 PyTorch model")
    teacher = _load_teacher(parent)
    root = parent.directory.parent / CACHE_DIR
    key = _cache_key(parent, config, calibration)
    try:
        root.mkdir(exist_ok=True)
    except OSError:
        root = Path(tempfile.mkdtemp(prefix="qdeploy-qat-"))  # not writable beside the artifacts: not shared
    with _locked(root, key):
        if (root / key).is_dir():
            ctx.progress(f"qat: reusing the fine-tuned model from {root / key}")
            student, record = _load(root / key, teacher)
            return Trained(student, teacher, record["notes"] + [f"fine-tune reused from {CACHE_DIR}/{key}"],
                           {"fine_tune": record.get("summary", {}), "fine_tune_cache": "reused"})
        student, notes = _insert_quantizers(teacher, config, calibration, ctx, input_names)
        summary = train(teacher, student) if train else {}
        notes += _training_notes(config, summary)
        summary = json.loads(json.dumps(summary, default=float))  # plain numbers, as the cache and manifest hold them
        _save(root, key, student.eval(), {"notes": notes, "summary": summary})
    return Trained(student, teacher, notes + [f"fine-tune cached in {CACHE_DIR}/{key} for the other format"],
                   {"fine_tune": summary, "fine_tune_cache": "made"})


def _build(parent: Artifact, config: Qat, calibration, target: Path, ctx, fmt: str, runtime: str,
           runtime_config: dict):
    from nncf.torch.extensions import ExtensionLoaderTimeoutException

    try:  # a compile killed by its timeout leaves a lock that blocks every later one: say how to clear it
        return _fine_tune_and_export(parent, config, calibration, target, ctx, fmt, runtime, runtime_config)
    except ExtensionLoaderTimeoutException as exc:
        stale = next((line.strip() for line in str(exc).splitlines() if "rm -rf" in line), "")
        raise UnsupportedError(f"qat: NNCF's C++ quantizer kernels did not compile and load within "
                               f"NNCF_EXTENSION_LOAD_TIMEOUT={os.environ.get('NNCF_EXTENSION_LOAD_TIMEOUT')} s; raise "
                               f"it, or remove a stale build lock ({stale})") from None


def _fine_tune_and_export(parent: Artifact, config: Qat, calibration, target: Path, ctx, fmt: str, runtime: str,
                          runtime_config: dict):
    from ..exporters import validation_batches
    from ..tasks import architecture, task

    trained = fine_tuned(parent, config, calibration, ctx)
    input_names, output_names = list(parent.manifest.inputs), list(task(parent.manifest.task).outputs)
    # The exporters' held-out sentences, and some calibration text: enough sentences for a stable error estimate.
    batches = validation_batches(ctx.tokenizer, input_names) + list(
        calibration.batches(ctx.tokenizer, input_names, stop=min(8, calibration.batch_count())))
    ctx.progress(f"qat: exporting to {fmt}")
    model_file = export(trained.student, trained.teacher, fmt, batches, input_names, output_names, target,
                        architecture(parent.manifest.source.get("model_type", "bert")).opset)
    ctx.progress(f"qat: validating the {fmt} graph")
    check = validate(parent, target, model_file, fmt, runtime, runtime_config, trained.student, batches,
                     output_names)
    return MethodResult(model_file, "int8", runtime_config, [*trained.notes, validation_note(check)],
                        record={**trained.record, "validation": check})


@register("qat", Qat, "onnx", needs_calibration=True,
          description="quantization-aware training (NNCF, PyTorch): fake quantizers from the calibration data, "
                      "fine-tuned on train=PATH, exported as ONNX QDQ int8 (steps=0: the post-training start)")
def qat(parent: Artifact, config: Qat, calibration, target: Path, ctx):
    return _build(parent, config, calibration, target, ctx, "onnx", "ort-cpu", ONNX.runtime_config())


@register("nncf-qat", NncfQat, "openvino", needs_calibration=True,
          description="the same quantization-aware training, exported as OpenVINO int8 IR (one fine-tune shared "
                      "with qat through a cache beside the artifacts)")
def nncf_qat(parent: Artifact, config: NncfQat, calibration, target: Path, ctx):
    return _build(parent, config, calibration, target, ctx, "openvino", "openvino-cpu", OPENVINO.runtime_config())
