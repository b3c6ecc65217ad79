"""OpenVINO IR converted straight from the PyTorch module (not via ONNX), weights kept in fp32."""
from __future__ import annotations

from pathlib import Path

from . import FORMATS, Format

MODEL_FILE = "openvino_model.xml"
# Without this hint OpenVINO runs bf16 on CPUs that have it: an "fp32" artifact must really run in fp32.
FP32_CONFIG = {"openvino": {"INFERENCE_PRECISION_HINT": "f32"}}


def write(wrapped, example, input_names, output_names, target: Path, opset: int):
    import openvino as ov

    # Shapes are left dynamic (batch, sequence) by giving only an example; names are set on the ports afterwards.
    model = ov.convert_model(wrapped, example_input=example)
    for port, name in zip(model.inputs, input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names):
        port.get_tensor().set_names({name})
    ov.save_model(model, str(target / MODEL_FILE), compress_to_fp16=False)
    return MODEL_FILE, dict(FP32_CONFIG)


FORMATS.register("openvino")(Format("openvino", "openvino-cpu", write))
