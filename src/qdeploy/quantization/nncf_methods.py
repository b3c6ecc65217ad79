"""NNCF post-training quantization (w8a8) of OpenVINO models. Its weight-only compression is weight-int8 and
weight-int4 (algorithms/), whose nncf-* names are aliases."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..artifact import Artifact
from ..errors import InputError
from . import MethodResult, register
from .backends.openvino import OPENVINO, read_model, save_model


@dataclass(frozen=True)
class NncfPtq:
    preset: Literal["performance", "mixed"] = "mixed"
    fast_bias_correction: bool = True
    smooth_quant_alpha: float | None = None  # None: NNCF's default for transformers
    ignored_names: tuple[str, ...] = ()


@register("nncf-ptq", NncfPtq, "openvino", needs_calibration=True,
          description="NNCF post-training int8 quantization of the OpenVINO model (transformer preset)")
def nncf_ptq(parent: Artifact, config: NncfPtq, calibration, target: Path, ctx):
    import nncf

    model = read_model(parent.model_path)
    dataset = calibration.nncf_dataset(ctx.tokenizer, list(parent.manifest.inputs))
    advanced = None
    if config.smooth_quant_alpha is not None:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=config.smooth_quant_alpha))
    ctx.progress(f"nncf-ptq: calibrating on {calibration.samples} samples from {calibration.spec}")
    try:
        quantized = nncf.quantize(
            model, dataset, preset=getattr(nncf.QuantizationPreset, config.preset.upper()),
            model_type=nncf.ModelType.TRANSFORMER, subset_size=calibration.batch_count(),
            fast_bias_correction=config.fast_bias_correction,
            ignored_scope=(nncf.IgnoredScope(names=list(config.ignored_names), validate=True)
                           if config.ignored_names else None),
            advanced_parameters=advanced)
    except nncf.ValidationError as exc:
        raise InputError(f"nncf-ptq: {exc}") from None
    return MethodResult(save_model(quantized, target), "int8", OPENVINO.runtime_config(),
                        [f"preset {config.preset}, model_type transformer"],
                        {n: "excluded by the user (nncf-ptq ignored_names)" for n in config.ignored_names})
