"""ONNX via the TorchScript exporter: for encoder models it is fast (2 s vs 14 s for dynamo) and gives the plain
MatMul/Add graphs ONNX Runtime's quantizer expects."""
from __future__ import annotations

import warnings
from pathlib import Path

from ..formats import runtime_config
from . import FORMATS, Format

MODEL_FILE = "model.onnx"
TWO_GB = 2 * 1024**3


def write(wrapped, example, input_names, output_names, target: Path, opset: int):
    import onnx
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, *output_names]}
    path = target / MODEL_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, example, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    if path.stat().st_size > TWO_GB or any(p.name != MODEL_FILE for p in target.iterdir()):
        # Large weights go to one external file next to the graph, with a relative location.
        model = onnx.load(str(path))
        for extra in target.iterdir():
            if extra.name != MODEL_FILE:
                extra.unlink()
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=MODEL_FILE + ".data", size_threshold=1024)
    return MODEL_FILE, runtime_config("onnx")


FORMATS.register("onnx")(Format("onnx", "ort-cpu", write, "exporting to onnx"))
