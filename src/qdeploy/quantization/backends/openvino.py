"""The OpenVINO backend: NNCF's quantize (int8, fp8) and compress_weights under the algorithms of ../algorithms."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, UnsupportedError
from ...formats import openvino_f32, runtime_config
from . import BACKENDS, Int8Settings, Linear, LinearGraph, within

MODEL_FILE = "openvino_model.xml"
# A quantized model is still compiled with f32 for the parts that stay in float.
ACTIVATIONS = {"Gelu", "Relu", "Tanh", "Sigmoid", "Swish", "HSwish", "Mish", "Erf"}


def quiet():
    import logging

    import nncf

    # NNCF logs tables at INFO; qdeploy reports what it did through the manifest's notes instead.
    nncf.set_log_level(logging.WARNING)


def read_model(model_path: Path):
    quiet()
    import openvino as ov

    return ov.Core().read_model(str(model_path))


def save_model(model, target: Path) -> str:
    import openvino as ov

    ov.save_model(model, str(target / MODEL_FILE), compress_to_fp16=False)
    return MODEL_FILE


def compress_int8(model_path: Path, symmetric: bool, target: Path) -> str:
    """NNCF's int8 weight compression (per output channel), saved into `target`; returns the note."""
    import nncf

    mode = nncf.CompressWeightsMode.INT8_SYM if symmetric else nncf.CompressWeightsMode.INT8_ASYM
    save_model(nncf.compress_weights(read_model(model_path), mode=mode), target)
    return f"mode int8_{'sym' if symmetric else 'asym'}, per-channel"


def weight_types(model) -> dict[str, str]:
    """Each compressed Linear layer's stored weight type (u8, i8, u4, i4), read from the constant its weight
    decompression starts from."""
    found = {}
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        node = op.input_value(1).get_node()
        for _ in range(6):
            if node.get_type_name() == "Constant" or node.get_input_size() == 0:
                break
            node = node.input_value(0).get_node()
        kind = node.get_element_type().get_type_name() if node.get_type_name() == "Constant" else ""
        if kind in ("u8", "i8", "u4", "i4"):
            found[op.get_friendly_name()] = kind
    return found


class OpenVinoLinears(LinearGraph):
    """MatMul ops whose second input is an f32 Constant (the IR qdeploy exports keeps f32 weights)."""

    def __init__(self, model_path: Path):
        import openvino as ov

        self.path = Path(model_path)
        self.model = ov.Core().read_model(str(model_path))

    def _matmuls(self):
        for op in self.model.get_ordered_ops():
            if op.get_type_name() != "MatMul":
                continue
            weight = op.input_value(1).get_node()
            if weight.get_type_name() == "Constant" and len(weight.get_output_shape(0)) == 2 \
                    and not op.get_attributes().get("transpose_a", False):
                yield op, weight

    @staticmethod
    def _port_name(output) -> str:
        return f"{output.get_node().get_friendly_name()}:{output.get_index()}"

    def linears(self) -> list[Linear]:
        found = []
        for op, weight in self._matmuls():
            data = weight.get_data().astype(np.float32)
            data = data.T if op.get_attributes().get("transpose_b", False) else data
            found.append(Linear(op.get_friendly_name(), self._port_name(op.input_value(0)), data))
        return found

    def activations(self, names, batches):
        import openvino as ov

        from ...calibration.statistics import openvino_activations

        probe = ov.Core().read_model(str(self.path))  # a copy: the extra results must not reach the saved model
        ports = {}
        for op in probe.get_ordered_ops():
            for output in op.outputs():
                if self._port_name(output) in names:
                    ports[self._port_name(output)] = output
        return openvino_activations(probe, ports, batches)

    def smooth(self, scales):
        from openvino import opset13 as ops

        done: dict[str, object] = {}
        for op, weight in list(self._matmuls()):
            source = op.input_value(0)
            name = self._port_name(source)
            if name not in scales:
                continue
            scale = scales[name].astype(np.float32)
            if name not in done:
                done[name] = ops.multiply(source, ops.constant(1.0 / scale)).output(0)
            data = weight.get_data().astype(np.float32)
            transposed = op.get_attributes().get("transpose_b", False)
            data = data * (scale[None, :] if transposed else scale[:, None])
            op.input(0).replace_source_output(done[name])
            op.input(1).replace_source_output(ops.constant(data).output(0))
        self.model.validate_nodes_and_infer_types()

    def save(self, path):
        import openvino as ov

        ov.save_model(self.model, str(path), compress_to_fp16=False)

    def ffn_names(self, down_only: bool) -> set[str]:
        """Linear layers within four ops of an activation function: before it (up-projection) or reading it (down),
        as ffn_matmuls finds them in an ONNX graph."""
        linears = {op.get_friendly_name() for op, _ in self._matmuls()}

        up = lambda node: [value.get_node() for value in node.input_values()]
        down = lambda node: [target.get_node() for out in node.outputs() for target in out.get_target_inputs()]
        found = set()
        for op in self.model.get_ordered_ops():
            if op.get_type_name() in ACTIVATIONS:
                found |= {n.get_friendly_name() for n in within(op, down) if n.get_friendly_name() in linears}
                if not down_only:
                    found |= {n.get_friendly_name() for n in within(op, up) if n.get_friendly_name() in linears}
        return found

    def head_names(self) -> set[str]:
        """The Linear layer that produces the model's first Result (the task's output, not the cache): the last
        MatMul on the way back from it, within four ops, as head_matmuls finds it."""
        linears = {op.get_friendly_name() for op, _ in self._matmuls()}
        frontier, found = [self.model.get_results()[0]], set()
        for _ in range(5):  # the Result itself, then four ops
            found |= {n.get_friendly_name() for n in frontier if n.get_type_name() == "MatMul"}
            frontier = [value.get_node() for n in frontier if n.get_type_name() != "MatMul"
                        for value in n.input_values()]
        return found & linears


def _error(exc: Exception) -> str:
    return str(exc).splitlines()[0]


class OpenVinoBackend:
    format = "openvino"
    model_file = MODEL_FILE
    runtime = "openvino-cpu"

    def runtime_config(self) -> dict[str, Any]:
        return runtime_config("openvino")

    def load_settings(self, model_path: Path, runtime_config: dict[str, Any]) -> dict[str, Any]:
        return runtime_config

    def read(self, model_path: Path) -> OpenVinoLinears:
        return OpenVinoLinears(model_path)

    def ffn_layers(self, model_path: Path, down_only: bool = False) -> set[str]:
        return OpenVinoLinears(model_path).ffn_names(down_only)

    def head_layers(self, model_path: Path) -> set[str]:
        return OpenVinoLinears(model_path).head_names()

    def int8(self, model_path, kept_float, target, calibration, ctx, parent, settings: Int8Settings) -> None:
        """nncf.quantize with the transformer model type and NNCF's own SmoothQuant off: the algorithm decided the
        migration (or that there is none)."""
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1))  # -1: off
        try:
            model = nncf.quantize(
                read_model(model_path),
                calibration.nncf_dataset(ctx.tokenizer, list(parent.manifest.inputs), ctx.progress),
                preset=getattr(nncf.QuantizationPreset, (settings.preset or "mixed").upper()),
                model_type=nncf.ModelType.TRANSFORMER, subset_size=calibration.batch_count(),
                advanced_parameters=advanced,
                ignored_scope=nncf.IgnoredScope(names=list(kept_float), validate=True) if kept_float else None)
        except nncf.ValidationError as exc:
            raise InputError(f"nncf: {_error(exc)}") from None
        save_model(model, target)

    def dynamic_int8(self, model_path, kept_float, target, settings: Int8Settings) -> None:
        raise UnsupportedError("dynamic int8 is an ONNX Runtime scheme; OpenVINO quantizes statically")

    def fp8(self, model_path, fp8_format, kept_float, target, calibration, ctx, parent) -> list[str]:
        """NNCF's FP8 mode: FakeConvert ops, which OpenVINO's CPU plugin emulates; NNCF puts the weights in the same
        fp8 format (it has no int8-weight variant of that mode)."""
        import nncf
        import openvino as ov

        mode = {"e4m3": nncf.QuantizationMode.FP8_E4M3, "e5m2": nncf.QuantizationMode.FP8_E5M2}[fp8_format]
        try:
            quantized = nncf.quantize(
                read_model(model_path),
                calibration.nncf_dataset(ctx.tokenizer, list(parent.manifest.inputs), ctx.progress),
                mode=mode, model_type=nncf.ModelType.TRANSFORMER, subset_size=calibration.batch_count(),
                ignored_scope=nncf.IgnoredScope(names=list(kept_float), validate=True) if kept_float else None)
        except (nncf.ValidationError, nncf.ParameterNotSupportedError) as exc:
            raise UnsupportedError(f"nncf fp8: {_error(exc)}") from None
        try:
            ov.Core().compile_model(quantized, "CPU", openvino_f32())
        except RuntimeError as exc:
            raise UnsupportedError(f"OpenVINO's CPU plugin cannot run the fp8 model: {_error(exc)}") from None
        save_model(quantized, target)
        fake = sum(op.get_type_name() == "FakeConvert" for op in quantized.get_ops())
        return [f"{fake} FakeConvert ops ({fp8_format.upper()}) on activations and weights; emulated on this CPU"]

    def weight_int4(self, model_path, config, target, calibration, ctx, parent, exclude=()) -> list[str]:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        mode_name = "int4_sym" if config.symmetric else "int4_asym"
        ratio = 1.0 if config.ratio is None else config.ratio
        dataset = calibration.nncf_dataset(ctx.tokenizer, list(parent.manifest.inputs)) if config.data_aware else None
        mode = {"int4_sym": nncf.CompressWeightsMode.INT4_SYM, "int4_asym": nncf.CompressWeightsMode.INT4_ASYM}
        try:
            # Layers whose width the group size does not divide (stories260K's 172-wide MLP) get the largest group
            # size that does, instead of failing the whole model.
            advanced = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)
            compressed = nncf.compress_weights(read_model(model_path), mode=mode[mode_name],
                                               group_size=config.group_size, ratio=ratio, dataset=dataset,
                                               all_layers=True, advanced_parameters=advanced,
                                               ignored_scope=nncf.IgnoredScope(names=list(exclude)) if exclude
                                               else None)
        except (nncf.ValidationError, ValueError, RuntimeError) as exc:
            raise InputError(f"nncf weight compression: {_error(exc)}") from None
        save_model(compressed, target)
        notes = [f"{mode_name}, group size {config.group_size}, ratio {ratio}"]
        bits = weight_types(compressed)
        backup = sorted(name for name, kind in bits.items() if "4" not in kind)
        if backup:  # NNCF's ratio: the most sensitive layers keep 8-bit weights, as the fallback of the int4 recipe
            notes.append(f"{len(bits) - len(backup)} of {len(bits)} Linear layers 4-bit, {len(backup)} fell back to "
                         f"int8: {', '.join(backup)}")
        return notes

    def weight_int8(self, model_path, config, target) -> list[str]:
        return [compress_int8(model_path, config.symmetric, target)]


OPENVINO = BACKENDS.register("openvino")(OpenVinoBackend())
