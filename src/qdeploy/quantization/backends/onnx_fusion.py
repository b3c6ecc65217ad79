"""Sibling projections fused into one kernel: the query, key and value projections of a layer (and its gate and up
projections) read the same activation, so ONNX Runtime can run them as one MatMulNBits with the weights side by side
and split the result, as ONNX Runtime GenAI's model builder lays its graphs out. One kernel instead of three reads the
activation once and gives the threads one larger product: at batch 1 a decode step is a sequence of such small
products.

Applied to the quantized graph (after a method has decided per MatMul what to do), so that the methods, their
exclusions and the layer names they report still see one MatMul per PyTorch Linear. Exact: each output column's
blocks, scales and zero points are the ones the method wrote.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

FUSABLE_ATTRIBUTES = ("K", "bits", "block_size", "accuracy_level")
EXTERNAL_BYTES = 1_800_000_000  # beyond this the 2 GB protobuf limit is near: weights go to a file beside the graph


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def fuse_sibling_matmul_nbits(model) -> int:
    """Fuse, in place, the MatMulNBits nodes that share their activation input and their K, bits, block size and
    accuracy level (and have no bias or group index). Returns how many nodes were replaced."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    groups: dict[tuple, list] = defaultdict(list)
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        inputs = list(node.input)
        if len(inputs) > 4 or not all(name in initializers for name in inputs[1:] if name):
            continue  # a bias or g_idx input, or weights computed in the graph: left alone
        attrs = _attributes(node)
        key = (inputs[0], len(inputs), *(attrs.get(a) for a in FUSABLE_ATTRIBUTES))
        groups[key].append(node)
    replaced = 0
    order = {id(node): i for i, node in enumerate(graph.node)}
    for key, nodes in groups.items():
        if len(nodes) < 2:
            continue
        nodes.sort(key=lambda n: order[id(n)])
        attrs = _attributes(nodes[0])
        widths = [int(_attributes(n)["N"]) for n in nodes]
        fused_inputs = [nodes[0].input[0]]
        for position in range(1, len(nodes[0].input)):
            if not nodes[0].input[position]:
                fused_inputs.append("")
                continue
            arrays = [numpy_helper.to_array(initializers[n.input[position]]) for n in nodes]
            # zero points may be stored flat: as rows of N, concatenated along N like the rest
            rows = [a.reshape(width, -1) for a, width in zip(arrays, widths)]
            stacked = np.concatenate(rows, axis=0)
            shape = (sum(widths), *arrays[0].shape[1:]) if arrays[0].ndim > 1 else (stacked.size,)
            name = f"{nodes[0].name}_fused_{position}"
            graph.initializer.append(numpy_helper.from_array(stacked.reshape(shape), name))
            fused_inputs.append(name)
        fused_out = f"{nodes[0].name}_fused_out"
        fused = helper.make_node("MatMulNBits", fused_inputs, [fused_out], name=f"{nodes[0].name}_fused",
                                 domain="com.microsoft", doc_string="fused: " + ", ".join(n.name for n in nodes),
                                 **{**attrs, "N": sum(widths)})
        split_sizes = f"{nodes[0].name}_fused_split"
        graph.initializer.append(numpy_helper.from_array(np.array(widths, dtype=np.int64), split_sizes))
        split = helper.make_node("Split", [fused_out, split_sizes], [n.output[0] for n in nodes],
                                 name=f"{nodes[0].name}_fused_split", axis=-1)
        first = order[id(nodes[0])]
        # the fused pair goes where the first of the siblings was: its input is ready there, and every consumer of
        # a sibling's output comes after that sibling
        graph.node.insert(first, split)
        graph.node.insert(first, fused)
        for node in nodes:
            graph.node.remove(node)
        order = {id(node): i for i, node in enumerate(graph.node)}
        replaced += len(nodes)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return replaced


def fuse_file(model_path) -> int:
    """`fuse_sibling_matmul_nbits` on a written graph, rewritten in place (its weights kept inline or external as
    they were). Returns how many nodes were replaced."""
    import onnx

    model = onnx.load(str(model_path))
    replaced = fuse_sibling_matmul_nbits(model)
    if replaced:
        external = model.ByteSize() > EXTERNAL_BYTES
        data = model_path.with_name(model_path.name + ".data")
        if data.exists():
            data.unlink()
        onnx.save(model, str(model_path), save_as_external_data=external, location=data.name if external else None)
    return replaced
