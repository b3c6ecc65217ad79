"""`qdeploy inspect`: first the artifact's layer plan (what was done to each layer, from its layers.json or read from
its graph), then, for an ONNX artifact with its fp32 parent beside it, per Linear layer its scales, the largest
activation reaching it and its simulated int8 SQNR against fp32 - the why behind a method's quality."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .artifact import Artifact
from .calibration import CalibrationSource
from .calibration.statistics import activation_absmax
from .errors import UnsupportedError
from .layer_plan import LayerPlan, read_plan


def _fp32_parent(artifact: Artifact) -> Artifact:
    if artifact.precision == "fp32":
        return artifact
    parent = artifact.directory.parent / (artifact.manifest.parent or "")
    if not artifact.manifest.parent or not (parent / "manifest.json").is_file():
        raise UnsupportedError(f"inspect needs the fp32 parent of {artifact.directory} ({artifact.manifest.parent}) "
                               "beside it, as in a run's artifacts/ directory")
    return Artifact.load(parent, verify=True)


def artifact_plan(artifact: Artifact) -> LayerPlan:
    """The plan the artifact carries; for one written before plans travelled (or an export), the plan read from its
    graph, with module names from the fp32 parent when it sits beside it. Needs no calibration data."""
    plan = read_plan(artifact.directory, artifact.manifest)
    if plan is not None:
        return plan
    from .layer_plan_graph import plan_from_graph

    parent = artifact.directory.parent / (artifact.manifest.parent or "") / "manifest.json"
    parent_graph = None
    if artifact.manifest.parent and parent.is_file():
        parent_graph = Artifact.load(parent.parent, graph=False).model_path
    method = (artifact.manifest.method or {}).get("name", f"the {artifact.precision} export")
    plan = plan_from_graph(artifact.format, artifact.model_path, method, parent_graph)
    if plan is None:
        raise UnsupportedError(f"inspect reads ONNX and OpenVINO graphs; {artifact.directory} is {artifact.format}")
    return plan


def _quantized_layers(model_path: Path) -> dict[str, dict]:
    """MatMuls fed by DequantizeLinear (QDQ), MatMulInteger (dynamic) or MatMulNBits, with their scales."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path), load_external_data=True).graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def scale_of(name: str):
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            return [float(scale.min()), float(scale.max())]
        return None

    found = {}
    for node in graph.node:
        if node.op_type == "MatMul":
            act, weight = scale_of(node.input[0]), scale_of(node.input[1])
            if act or weight:
                found[node.name] = {"kind": "qdq", "activation_scale": act, "weight_scale_range": weight}
        elif node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits"):
            found[node.name.removesuffix("_quant")] = {"kind": node.op_type}
    return found


def inspect(artifact_dir: str | Path, calibration: CalibrationSource, out: Path | None = None) -> dict:
    artifact = Artifact.load(artifact_dir, verify=True)
    if artifact.format != "onnx":
        raise UnsupportedError(f"this analysis reads ONNX graphs; {artifact.directory} is {artifact.format}")
    parent = _fp32_parent(artifact)
    from transformers import AutoTokenizer

    from .quantization.ort_methods import weight_matmuls
    from .quantization.sensitivity import layer_sqnr

    tokenizer = AutoTokenizer.from_pretrained(str(parent.directory))
    batches = list(calibration.batches(tokenizer, list(parent.manifest.inputs)))
    import onnx

    graph = onnx.load(str(parent.model_path))
    nodes = weight_matmuls(parent.model_path)
    inputs = {n.name: n.input[0] for n in graph.graph.node if n.name in set(nodes)}
    absmax = activation_absmax(graph, sorted(set(inputs.values())), batches)
    sqnr = layer_sqnr(parent.model_path, nodes, batches[:4])
    quantized = _quantized_layers(artifact.model_path)
    layers = []
    for name in nodes:
        peak = absmax[inputs[name]]
        layers.append({"layer": name, "quantized": name in quantized, **quantized.get(name, {}),
                       "activation_absmax": round(float(peak.max()), 4),
                       "channels_above_6": int((peak > 6.0).sum()), "int8_sqnr_db": round(sqnr[name], 2)})
    result = {"schema": "qdeploy.inspect/1", "artifact": str(artifact.directory), "parent": str(parent.directory),
              "method": artifact.manifest.method, "calibration": {"spec": calibration.spec,
                                                                  "samples": calibration.samples},
              "layers": layers, "quantized": sum(l["quantized"] for l in layers), "total": len(layers),
              "median_sqnr_db": float(np.median([l["int8_sqnr_db"] for l in layers]))}
    if out:
        out = Path(out)
        tmp = out.with_name(out.name + ".part")
        tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
        os.replace(tmp, out)
    return result
