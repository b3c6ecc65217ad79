"""SmoothQuant for ONNX graphs (Xiao et al. 2022): move activation outliers into the weights before int8.

For each group of weight MatMuls that read the same activation X, per input channel j:
    s_j = max|X_j|^alpha / max|W_j|^(1-alpha),   X' = X / s (one Mul),   W' = diag(s) W.
The product is unchanged in exact arithmetic; X' has no outlier channels left, so per-tensor int8 can represent it.
The statistics come from running the float graph on the calibration batches.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
import numpy as np

from ..calibration.statistics import activation_absmax


def smooth(model_path: Path, out_path: Path, batches, alpha: float, node_names: list[str]) -> int:
    """Write a smoothed copy of the graph; returns how many activation groups were smoothed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    wanted = set(node_names)
    groups: dict[str, list] = defaultdict(list)  # activation name -> MatMul nodes reading it with a weight
    for node in graph.node:
        if node.op_type == "MatMul" and node.name in wanted and node.input[1] in weights:
            if numpy_helper.to_array(weights[node.input[1]]).ndim == 2:
                groups[node.input[0]].append(node)
    absmax = activation_absmax(model, list(groups), batches)
    new_nodes = []
    for activation, nodes in groups.items():
        mats = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        w_max = np.max([np.abs(m).max(axis=1) for m in mats], axis=0)
        scale = (np.power(np.maximum(absmax[activation], 1e-5), alpha)
                 / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)).astype(np.float32)
        scale = np.clip(scale, 1e-2, 1e2)
        inv_name = f"{activation}_smooth_inv"
        smoothed = f"{activation}_smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inv_name))
        new_nodes.append(onnx.helper.make_node("Mul", [activation, inv_name], [smoothed],
                                               name=f"{activation}_SmoothQuantMul"))
        for node, mat in zip(nodes, mats):
            weights[node.input[1]].CopyFrom(numpy_helper.from_array((mat * scale[:, None]).astype(mat.dtype),
                                                                    node.input[1]))
            node.input[0] = smoothed
    # A Mul must come before its consumers: insert each right after its activation's producer.
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    ordered = list(graph.node)
    for mul in sorted(new_nodes, key=lambda m: producers.get(m.input[0], -1), reverse=True):
        ordered.insert(producers.get(mul.input[0], -1) + 1, mul)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.save_model(model, str(out_path))
    return len(groups)
