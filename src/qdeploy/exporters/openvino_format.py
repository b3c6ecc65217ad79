"""OpenVINO IR converted straight from the PyTorch module (not via ONNX), weights kept in fp32."""
from __future__ import annotations

from pathlib import Path

from ..formats import runtime_config
from . import FORMATS, Format

MODEL_FILE = "openvino_model.xml"  # the fp32 settings (formats.py) keep an "fp32" artifact really in fp32


def write(wrapped, example, input_names, output_names, target: Path, opset: int):
    import openvino as ov

    # Shapes are left dynamic (batch, sequence) by giving only an example; names are set on the ports afterwards.
    model = ov.convert_model(wrapped, example_input=example)
    for port, name in zip(model.inputs, input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names):
        port.get_tensor().set_names({name})
    ov.save_model(model, str(target / MODEL_FILE), compress_to_fp16=False)
    return MODEL_FILE, runtime_config("openvino")


FORMATS.register("openvino")(Format("openvino", "openvino-cpu", write, "converting to openvino"))
