"""The Linear layers of a float graph behind one small interface, so SmoothQuant and the outlier recipe are written
once (as NNCF writes an algorithm once and keeps backend details apart).

A backend lists the Linear layers (name, the activation they read, the weight as [in, out]), runs the float graph to
return activations on calibration batches, applies SmoothQuant's migration (X / s before a group of layers reading X,
diag(s) W in each of them) and saves the result. One class per format, registered by format name.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import QdeployError
from .ort_methods import weight_matmuls


@dataclass
class Linear:
    name: str  # the node's name: what the quantizer's ignore lists take
    activation: str  # the tensor it reads; layers reading the same one form a SmoothQuant group
    weight: np.ndarray  # [in, out]


class LinearGraph:
    def linears(self) -> list[Linear]:
        raise NotImplementedError

    def activations(self, names: list[str], batches) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError

    def smooth(self, scales: dict[str, np.ndarray]) -> None:
        """Divide each activation by its per-channel scale and multiply the weights reading it by the same."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError

    def groups(self) -> dict[str, list[Linear]]:
        found: dict[str, list[Linear]] = defaultdict(list)
        for layer in self.linears():
            found[layer.activation].append(layer)
        if not found:
            raise QdeployError("no Linear layer (MatMul with a constant 2-D weight) found; nothing to quantize")
        return dict(found)


class OnnxLinears(LinearGraph):
    def __init__(self, model_path: Path):
        import onnx

        self.model = onnx.load(str(model_path))
        self._names = set(weight_matmuls(model_path))

    def _weights(self):
        return {init.name: init for init in self.model.graph.initializer}

    def linears(self) -> list[Linear]:
        from onnx import numpy_helper

        weights = self._weights()
        found = []
        for node in self.model.graph.node:
            if node.name in self._names and node.input[1] in weights:
                weight = numpy_helper.to_array(weights[node.input[1]])
                if weight.ndim == 2:
                    found.append(Linear(node.name, node.input[0], weight))
        return found

    def activations(self, names, batches):
        from ..calibration.statistics import onnx_activations

        return onnx_activations(self.model, names, batches)

    def smooth(self, scales):
        import onnx
        from onnx import numpy_helper

        graph, weights = self.model.graph, self._weights()
        new_nodes = []
        for activation, scale in scales.items():
            inv_name, smoothed = f"{activation}_smooth_inv", f"{activation}_smoothed"
            graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inv_name))
            new_nodes.append(onnx.helper.make_node("Mul", [activation, inv_name], [smoothed],
                                                   name=f"{activation}_SmoothQuantMul"))
            for node in graph.node:
                if node.name in self._names and node.input[0] == activation and node.input[1] in weights:
                    mat = numpy_helper.to_array(weights[node.input[1]])
                    weights[node.input[1]].CopyFrom(numpy_helper.from_array(
                        (mat * scale[:, None]).astype(mat.dtype), node.input[1]))
                    node.input[0] = smoothed
        # A Mul must come before its consumers: insert each right after its activation's producer.
        producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
        ordered = list(graph.node)
        for mul in sorted(new_nodes, key=lambda m: producers.get(m.input[0], -1), reverse=True):
            ordered.insert(producers.get(mul.input[0], -1) + 1, mul)
        del graph.node[:]
        graph.node.extend(ordered)

    def save(self, path):
        import onnx

        onnx.save_model(self.model, str(path))


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

        from ..calibration.statistics import openvino_activations

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


BACKENDS = {"onnx": OnnxLinears, "openvino": OpenVinoLinears}


def linear_graph(fmt: str, model_path: Path) -> LinearGraph:
    return BACKENDS[fmt](model_path)
