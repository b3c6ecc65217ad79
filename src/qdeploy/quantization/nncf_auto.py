"""Accuracy-aware fallback for OpenVINO models with NNCF's own restorer (`nncf.quantize_with_accuracy_control`):
int8 everywhere, then quantizers reverted, most harmful first by NNCF's ranking of output differences, until the
metric is within the tolerance or the iterations run out.

The metric is qdeploy's (the same one `auto` uses for ONNX), measured on the user's file through the compiled model;
NNCF ranks layers on held-out built-in sentences. The notes list the Linear layers left in float.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from ..artifact import Artifact
from ..errors import ConfigError, InputError
from . import MethodResult, register
from .auto import AccuracyTarget, evaluation_target
from ..formats import openvino_f32
from .backends.openvino import MODEL_FILE, OPENVINO, quiet as _quiet


@dataclass(frozen=True)
class NncfAuto(AccuracyTarget):
    NAME: ClassVar[str] = "nncf-auto"
    max_iterations: int = 8  # rounds of reverting quantizers to float
    preset: Literal["performance", "mixed"] = "mixed"

    def __post_init__(self):
        super().__post_init__()
        if self.max_iterations < 1:
            raise ConfigError(f"nncf-auto max_iterations must be at least 1, got {self.max_iterations}")


class _CompiledSession:
    """A compiled OpenVINO model behind the session interface the metrics take."""

    def __init__(self, compiled, output_names: list[str]):
        self.request = compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.outputs = list(zip(output_names, compiled.outputs))

    def run(self, inputs):
        result = self.request.infer({name: inputs[name] for name in self.input_names})
        return {name: np.array(result[port]) for name, port in self.outputs}


def float_linears(model) -> list[str]:
    """MatMuls with a constant weight whose activation input is not fed by a FakeQuantize: the layers left float."""
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        weight = op.input_value(1).get_node().get_type_name()  # a constant, possibly behind its own quantizer
        activation = op.input_value(0).get_node().get_type_name()
        if weight in ("Constant", "Convert", "FakeQuantize", "Multiply") and activation != "FakeQuantize":
            found.append(op.get_friendly_name())
    return found


@register("nncf-auto", NncfAuto, "openvino", needs_calibration=True,
          description="accuracy-aware fallback with NNCF's restorer: int8, then quantizers back to float until the "
                      "quality loss is within a tolerance (needs eval=PATH)")
def nncf_auto(parent: Artifact, config: NncfAuto, calibration, target: Path, ctx):
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from .. import evaluation

    metric_name, metric, data = evaluation_target(parent, config.metric, config.eval, "nncf-auto")
    eval_ctx = evaluation.EvalContext(ctx.tokenizer, list(parent.manifest.inputs))
    sign = 1.0 if metric.higher_is_better else -1.0  # NNCF maximizes
    scores: list[float] = []

    def validate(model, _items):
        compiled = model if hasattr(model, "create_infer_request") else ov.Core().compile_model(
            model, "CPU", openvino_f32())
        value = metric.evaluate(_CompiledSession(compiled, list(parent.manifest.outputs)), eval_ctx, data).value
        scores.append(value)
        ctx.progress(f"nncf-auto: {metric_name} {value:.4f}")
        return sign * value, None

    _quiet()
    ranking = nncf.Dataset(list(evaluation.encode(evaluation.heldout_texts(), eval_ctx)))
    try:
        model = nncf.quantize_with_accuracy_control(
            ov.Core().read_model(str(parent.model_path)),
            calibration.nncf_dataset(ctx.tokenizer, list(parent.manifest.inputs), ctx.progress), ranking, validate,
            max_drop=config.tolerance, drop_type=nncf.DropType.RELATIVE if config.relative else nncf.DropType.ABSOLUTE,
            preset=getattr(nncf.QuantizationPreset, config.preset.upper()), model_type=nncf.ModelType.TRANSFORMER,
            subset_size=calibration.batch_count(),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=config.max_iterations))
    except nncf.ValidationError as exc:
        raise InputError(f"nncf-auto: {str(exc).splitlines()[0]}") from None
    ov.save_model(model, str(target / MODEL_FILE), compress_to_fp16=False)
    floats = float_linears(model)
    reference, final = scores[0], scores[-1]
    loss = (reference - final) * sign
    allowed = config.tolerance * (abs(reference) if config.relative else 1.0)
    notes = [(f"tolerance {config.tolerance}{' relative' if config.relative else ''} met" if loss <= allowed + 1e-12
              else f"tolerance {config.tolerance} NOT met; best found") +
             f": {metric_name} {final:.4f} vs fp32 {reference:.4f}; {len(floats)} Linear layers in float",
             "evaluated: " + ", ".join(f"{v:.4f}" for v in scores)]
    notes += [f"float: {name}" for name in floats]
    return MethodResult(MODEL_FILE, "int8-mixed", OPENVINO.runtime_config(), notes)
