"""The structure of an ONNX graph as the quantizers see it: its Linear layers (MatMuls with a constant weight), the
feed-forward ones, the embedding tables, and the Linear-layer view (`OnnxLinears`) SmoothQuant and the outlier recipe
read and change. Found from the graph's structure, never from layer names."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Linear, LinearGraph, within


def weight_matmuls(model_path: Path) -> list[str]:
    """MatMul nodes with a constant weight: the Linear layers.

    Activation-by-activation MatMuls (attention scores, attention times values) and the attention-mask arithmetic stay
    in float: quantizing the mask's Add alone (its range reaches 1e36) drops MiniLM's embedding cosine to about 0.4.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]


ACTIVATIONS = {"Erf", "Gelu", "FastGelu", "BiasGelu", "Relu", "Tanh", "Sigmoid"}


def ffn_matmuls(model_path: Path) -> set[str]:
    """The feed-forward MatMuls of each block: the one feeding the activation function and the one it feeds.

    Their inputs carry the widest activation ranges of a transformer (GELU outputs and the outlier channels of the
    attention block's LayerNorm): per-tensor int8 there costs MiniLM about 0.07 of embedding cosine (0.925 vs 0.997).
    Found from the graph's structure, not from layer names.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    # A walk ends at a Linear layer: past it lies the other block (with a fused RMSNormalization, the attention
    # output projection is four steps up from the feed-forward activation).
    up_of = lambda node: [] if node.op_type == "MatMul" else [producer[i] for i in node.input if i in producer]
    down_of = lambda node: [] if node.op_type == "MatMul" else [c for o in node.output for c in consumers.get(o, [])]
    found = set()
    for node in graph.node:
        if node.op_type in ACTIVATIONS:
            found |= {n.name for n in within(node, up_of) if n.op_type == "MatMul"}
            found |= {n.name for n in within(node, down_of) if n.op_type == "MatMul"}
    return found


def ffn_down_matmuls(model_path: Path) -> set[str]:
    """Of the feed-forward MatMuls, those reading the activation function's output (the down-projection): an input
    with no LayerNorm before it, whose skewed range neither per-tensor int8 nor SmoothQuant's scaling serves well."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    ffn = ffn_matmuls(model_path)

    def after_activation(node, hops=4) -> bool:
        frontier = [producer[i] for i in node.input if i in producer]
        for _ in range(hops):
            if any(n.op_type in ACTIVATIONS for n in frontier):
                return True
            frontier = [producer[i] for n in frontier for i in n.input if i in producer]
        return False

    return {n.name for n in graph.node if n.name in ffn and after_activation(n)}


def embedding_gathers(model_path: Path) -> list[str]:
    """Gather nodes reading a 2-D constant table: the token, position and type embeddings (over half of MiniLM's
    bytes). Int8 tables shrink the file ~4x there and cost no speed: a lookup is a lookup."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    tables = {init.name for init in model.graph.initializer if len(init.dims) == 2}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]



def head_matmuls(model_path: Path) -> set[str]:
    """The Linear layer that produces the graph's first output (the task's: a language model's logits, not its
    cache): the last MatMul on the way back from that output, within four nodes, if it has a constant weight. Empty
    when that MatMul reads a computed weight: a tied lm_head exported as a Transpose of the embedding table
    (SmolLM2's ONNX graph), which the static recipes leave float; weight-only ones give it a weight (untie_head)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return {node.name for node in _logits_matmuls(graph)} & set(weight_matmuls(model_path))


def _logits_matmuls(graph) -> list:
    """The MatMuls on the way back from the graph's first output, within four nodes, the nearest first; a walk stops
    at a MatMul."""
    producer = {out: node for node in graph.node for out in node.output}
    frontier, found = [graph.output[0].name], []
    for _ in range(4):
        nodes = [producer[name] for name in frontier if name in producer]
        found += [n for n in nodes if n.op_type == "MatMul"]
        frontier = [name for n in nodes if n.op_type != "MatMul" for name in n.input]
    return found


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
        from ...calibration.statistics import onnx_activations

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


def untie_head(model) -> str | None:
    """Give a tied lm_head its own weight, in place: the logits MatMul reading `Transpose(embedding table)` reads a
    transposed copy instead. Returns the MatMul's name, or None when the head has a weight of its own already.

    Why: a Transpose of a constant is not a constant weight to ONNX Runtime's quantizers, so the head (SmolLM2's is
    a fifth of the model's parameters, read whole every decode step) stayed fp32 in every recipe.
    """
    from onnx import numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    tables = {init.name: init for init in graph.initializer if len(init.dims) == 2}
    for node in _logits_matmuls(graph):
        transpose = producer.get(node.input[1])
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in tables:
            continue
        if next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [1, 0]) != [1, 0]:
            continue
        weight = numpy_helper.to_array(tables[transpose.input[0]]).T.copy()
        name = f"{node.name}.untied_weight"
        graph.initializer.append(numpy_helper.from_array(weight, name))
        node.input[1] = name
        if not any(transpose.output[0] in n.input for n in graph.node):
            graph.node.remove(transpose)
        return node.name
    return None


def quantize_embeddings(model, symmetric: bool, block: int = 32) -> list[str]:
    """Embedding tables to 8 bits in blocks of `block` along the hidden axis, in place: each Gather reading a 2-D
    float table that nothing else reads becomes GatherBlockQuantized. Returns the tables' names.

    ONNX Runtime's weight-only quantizer writes that op for 4-bit tables only; at 8 bits a table costs a quarter of its
    fp32 bytes (SmolLM2's is 113 MB) and a lookup stays a lookup."""
    from onnx import helper, numpy_helper

    graph = model.graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    done = []
    for init in list(graph.initializer):
        nodes = readers.get(init.name, [])
        axis = [next((a.i for a in n.attribute if a.name == "axis"), 0) for n in nodes]
        if (len(init.dims) != 2 or init.data_type != 1 or init.dims[1] % block or not nodes
                or any(n.op_type != "Gather" or n.input[0] != init.name for n in nodes) or any(axis)):
            continue
        table = numpy_helper.to_array(init).astype(np.float32)
        blocks = table.reshape(table.shape[0], -1, block)
        if symmetric:  # zero point 128: signed values in unsigned storage, as MatMulNBits' symmetric 8-bit
            scale = np.abs(blocks).max(axis=-1) / 127
            zero = np.full(scale.shape, 128, dtype=np.uint8)
        else:
            low, high = np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0)
            scale = (high - low) / 255
            zero = np.clip(np.round(-low / np.where(scale > 0, scale, 1)), 0, 255).astype(np.uint8)
        scale = np.where(scale > 0, scale, 1).astype(np.float32)
        data = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 255).astype(np.uint8)
        prefix = init.name
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(data.reshape(table.shape), prefix + "_q8"),
                                  numpy_helper.from_array(scale, prefix + "_scales"),
                                  numpy_helper.from_array(zero, prefix + "_zero_points")])
        for node in nodes:
            quantized = helper.make_node("GatherBlockQuantized", [prefix + "_q8", node.input[1], prefix + "_scales",
                                                                  prefix + "_zero_points"], list(node.output),
                                         name=node.name + "_q8", domain="com.microsoft", bits=8, block_size=block,
                                         gather_axis=0, quantize_axis=1)
            graph.node.insert(list(graph.node).index(node), quantized)
            graph.node.remove(node)
        done.append(prefix)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done
