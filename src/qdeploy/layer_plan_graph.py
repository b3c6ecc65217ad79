"""A layer plan read back from a written graph (ONNX or OpenVINO IR): what each weight-bearing layer really does,
found from the operators and constants the backend wrote, never from a method's notes.

Layers are named by their PyTorch module. Every qdeploy exporter wraps the Hugging Face model as the attribute `model`
of a module of its own, so every name the graphs carry starts with that wrapper's "model." and loses it here. Where the
names come from:
- ONNX from the TorchScript exporter (encoders): node names are module paths, `/model/bert/.../query/MatMul`;
- ONNX from the dynamo exporter (decoders, seq2seq): each node's `pkg.torch.onnx.name_scopes` metadata. Quantizers drop
  that metadata on the nodes they replace (MatMulNBits `<name>_Q8`, MatMulInteger `<name>_quant`, a fused kernel naming
  its siblings in its doc string), so the names are read from the float parent's graph when it is given;
- OpenVINO converted from PyTorch (encoders): friendly names `__module.model.bert...query/aten::linear/MatMul`;
- OpenVINO converted from the dynamo ONNX graph (decoders): the exporter records each MatMul's module in the model's
  rt_info (MODULES_KEY, by output tensor name: `tag_openvino_modules`), which NNCF's transformations keep.
A graph with none of these (an IR exported before the tags) keeps its node names: its plan is still true, but it does
not line up with the other format's.
"""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

from .layer_plan import LayerPlan, LayerScheme, in_order

WRAPPER = "model."
MODULES_KEY = ["qdeploy", "modules"]
_SUFFIX = re.compile(r"(_Q\d+)?(_fused)?$|_quant$|_q8$")
ONNX_TYPES = {"INT8": "int8", "UINT8": "int8", "INT4": "int4", "UINT4": "int4", "FLOAT8E4M3FN": "fp8-e4m3",
              "FLOAT8E4M3FNUZ": "fp8-e4m3", "FLOAT8E5M2": "fp8-e5m2", "FLOAT8E5M2FNUZ": "fp8-e5m2"}
OV_TYPES = {"i8": "int8", "u8": "int8", "i4": "int4", "u4": "int4", "f8e4m3": "fp8-e4m3", "f8e5m2": "fp8-e5m2"}


def module_of(name: str) -> str | None:
    """The module a path-like node name comes from (None when the name is not one)."""
    if name.startswith("__module."):  # OpenVINO from PyTorch: module path, then the aten op and the node
        path = name.removeprefix("__module.").split("/")[0]
    elif name.startswith("/") and name.count("/") >= 2:  # TorchScript ONNX: /a/b/c/MatMul
        path = ".".join(name.strip("/").split("/")[:-1])
    else:
        return None
    return path.removeprefix(WRAPPER) or None


def _scope_module(node) -> str | None:
    meta = {p.key: p.value for p in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" not in meta:
        return None
    try:
        scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
    except (ValueError, SyntaxError):
        return None
    # the last scope is the op itself (linear_3); the one before it the module that called it
    return scopes[-2].removeprefix(WRAPPER) if len(scopes) >= 2 and scopes[-2] else None


def onnx_modules(graph) -> dict[str, str]:
    """Node name and first output tensor -> module, for every node of an ONNX graph whose module can be read."""
    found = {}
    for node in graph.node:
        module = _scope_module(node) or module_of(node.name)
        if module:
            found[node.name] = module
            if node.output:
                found[node.output[0]] = module
    return found


def tag_openvino_modules(ov_model, onnx_path: Path) -> None:
    """Record, in an IR converted from `onnx_path`, the module of each node by its output tensor name: the IR keeps
    the tensor names, not the ONNX metadata that says which module a node came from."""
    import onnx

    modules = onnx_modules(onnx.load(str(onnx_path), load_external_data=False).graph)
    ov_model.set_rt_info(json.dumps(modules, sort_keys=True), MODULES_KEY)


def _name(names: dict[str, str], *keys: str) -> str:
    for key in keys:
        if key in names:
            return names[key]
    for key in keys:
        if module_of(key):
            return module_of(key)
    return keys[0]


def _tables(names: list[str], how: str) -> str:
    return f"embedding table{'s' if len(names) > 1 else ''} int8 {how}: {', '.join(sorted(set(names)))}"


def _originals(node) -> list[str]:
    """The float graph's node names a (possibly rewritten) node stands for."""
    names = node.doc_string.removeprefix("fused: ").split(", ") if node.doc_string.startswith("fused: ") \
        else [node.name]
    return [_SUFFIX.sub("", name) for name in names]


def plan_from_onnx(path: Path, method: str, parent: Path | None = None, float_reasons: dict[str, str] | None = None,
                   transforms: tuple[str, ...] = ()) -> LayerPlan:
    """The plan an ONNX graph carries: MatMulNBits (weights int{bits} in blocks; activations int8 per block at run
    time at accuracy_level 4), MatMulInteger and DynamicQuantizeMatMul (int8, activations at run time), QDQ
    (DequantizeLinear on the weight and on the activation: static), or a float MatMul/Gemm with a constant weight."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    names = onnx_modules(graph)
    if parent is not None:
        names = {**names, **onnx_modules(onnx.load(str(parent), load_external_data=False).graph)}
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    reasons = float_reasons or {}
    type_name = onnx.TensorProto.DataType.Name

    def attrs(node) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def zeros(name: str) -> bool | None:
        init = inits.get(name)
        if init is None or init.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return bool((numpy_helper.to_array(init).astype("float32") == 0).all())

    def source(name: str):
        """The constant a weight input comes from, through the Transpose/Reshape/DequantizeLinear before it."""
        for _ in range(4):
            if name in inits:
                return inits[name], None
            node = producer.get(name)
            if node is None or node.op_type == "Constant":
                return (node, None) if node is not None else (None, None)
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                return inits[node.input[0]], node
            if node.op_type not in ("Transpose", "Reshape", "Cast"):
                return None, None
            name = node.input[0]
        return None, None

    def activation(name: str) -> tuple[str, str]:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] in inits:
            return "float", ""
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        kind = ONNX_TYPES.get(type_name(zero.data_type), "int8") if zero is not None else "int8"
        return ("int8-static" if kind == "int8" else kind), f"activations {kind} per tensor, calibrated (QDQ)"

    layers: dict[str, LayerScheme] = {}
    fused = 0
    for node in graph.node:
        op, a = node.op_type, attrs(node)
        if op == "MatMulNBits":
            level = int(a.get("accuracy_level", 0))
            block = int(a["block_size"])
            why = (f"activations int8 per block of {block} at run time: ONNX Runtime accuracy_level 4" if level == 4
                   else f"MatMulNBits, activations float (accuracy_level {level})")
            scheme = LayerScheme(f"int{a['bits']}", "int8-dynamic-block" if level == 4 else "float", "block", block,
                                 len(node.input) < 4 or not node.input[3], why)
            fused += node.doc_string.startswith("fused: ")
        elif op in ("MatMulInteger", "DynamicQuantizeMatMul"):
            weight = inits.get(node.input[1])
            if weight is None:
                continue
            # MatMulInteger: zero point input 3; DynamicQuantizeMatMul: scale 2, zero point 3 (either gives the grain)
            grain = [inits[n] for n in node.input[2:4] if n in inits]
            per_channel = any(len(g.dims) and g.dims[-1] > 1 for g in grain)
            scheme = LayerScheme(ONNX_TYPES.get(type_name(weight.data_type), "int8"), "int8-dynamic",
                                 "per-channel" if per_channel else "per-tensor", None,
                                 zeros(node.input[3]) if len(node.input) > 3 and node.input[3] else True,
                                 "activations int8 per tensor at run time (DynamicQuantizeLinear)")
        elif op in ("MatMul", "Gemm") and len(node.input) > 1:
            weight, dq = source(node.input[1])
            dims = list(getattr(weight, "dims", [])) or (
                list(weight.attribute[0].t.dims) if weight is not None and getattr(weight, "op_type", "") == "Constant"
                and weight.attribute and weight.attribute[0].HasField("t") else [])
            if len(dims) < 2:
                continue  # activation by activation (attention scores), or a scalar
            acts, why = activation(node.input[0])
            tied = producer.get(node.input[1]) is not None and producer[node.input[1]].op_type == "Transpose"
            if dq is None:
                why = reasons.get(node.name) or ("weight shared with the embedding table (read through a "
                                                 "Transpose), " if tied else "") + f"kept float by {method}"
                if acts != "float":  # QDQ on a tensor that a quantized sibling also reads
                    why += f"; its input is rounded to {acts.split('-')[0]} for a quantized layer reading it too"
                scheme = LayerScheme("float", acts, why=why)
            else:
                scale = inits.get(dq.input[1])
                rank = len(scale.dims) if scale is not None else 0
                count = 1 if scale is None else int(math.prod(scale.dims) or 1)
                grain = "per-tensor" if count == 1 else "per-channel" if rank == 1 else "block"
                block = attrs(dq).get("block_size") if grain == "block" else None
                kind = ONNX_TYPES.get(type_name(weight.data_type), "int8")
                symmetric = zeros(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else True
                why = why or "weights only (QDQ), activations float"
                if tied:
                    why += "; weight shared with the embedding table"
                scheme = LayerScheme(kind, acts, grain, block, symmetric, why)
        else:
            continue
        for original in _originals(node):
            layers.setdefault(_name(names, original, *node.output[:1]) if len(_originals(node)) == 1
                              else _name(names, original), scheme)
    extra = list(transforms)
    tables = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    tables += [n for n in graph.node if n.op_type == "Gather" and (source(n.input[0])[1] is not None or (
        n.input[0] in inits and type_name(inits[n.input[0]].data_type) in ONNX_TYPES))]
    kinds: dict[str, list[str]] = {}
    for table in tables:
        how = (f"in blocks of {attrs(table).get('block_size')} (GatherBlockQuantized)"
               if table.op_type == "GatherBlockQuantized" else "per tensor (DequantizeLinear)")
        kinds.setdefault(how, []).append(_name(names, *_originals(table)))
    extra += [_tables(found, how) for how, found in kinds.items()]
    if fused:
        extra.append(f"{fused} MatMulNBits kernels each run sibling projections (query/key/value, gate/up) at once")
    if any(n.op_type == "GroupQueryAttention" for n in graph.node):
        extra.append("attention in ONNX Runtime GenAI's form (GroupQueryAttention)")
    return LayerPlan(method, "onnx", in_order(layers), tuple(extra))


def _ov_modules(model) -> dict[str, str]:
    try:
        return json.loads(model.get_rt_info(MODULES_KEY).astype(str)) if model.has_rt_info(MODULES_KEY) else {}
    except ValueError:
        return {}


def _constant(node) -> list:
    """The nodes from a weight input back to its Constant: Constant -> Convert -> (Subtract) -> Multiply ->
    (Reshape) -> (Convert) for a compressed weight, the Constant alone for a float one (last: where the walk ended)."""
    chain = []
    for _ in range(7):
        chain.append(node)
        if node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose") \
                or node.get_input_size() == 0:
            break
        node = node.input_value(0).get_node()
    return chain


def plan_from_openvino(path: Path, method: str, parent: Path | None = None,
                       float_reasons: dict[str, str] | None = None, transforms: tuple[str, ...] = ()) -> LayerPlan:
    """The plan an IR carries: a MatMul whose weight is an i8/u8/i4/u4/f8 constant decompressed by Convert ->
    (Subtract) -> Multiply (weights of that type; per-channel, or grouped when the constant is split in groups);
    FakeQuantize on its activation input (static int8), FakeConvert (fp8); else float."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    names = _ov_modules(model)
    if not names and parent is not None and not any(module_of(op.get_friendly_name()) for op in model.get_ops()
                                                    if op.get_type_name() == "MatMul"):  # node names not paths
        names = _ov_modules(core.read_model(str(parent)))  # the tags, where the written IR lost them
    reasons = float_reasons or {}
    layers: dict[str, LayerScheme] = {}
    smoothed, tables = False, []
    for op in model.get_ordered_ops():
        smoothed |= "nncf_smooth_quant" in op.get_friendly_name()
        if op.get_type_name() == "Gather" and _constant(op.input_value(0).get_node())[-1].get_element_type() \
                .get_type_name() in OV_TYPES:
            tables.append(next((names[k] for k in [op.get_friendly_name(), *sorted(op.output(0).get_names())]
                                if k in names), None) or module_of(op.get_friendly_name()) or op.get_friendly_name())
        if op.get_type_name() != "MatMul":
            continue
        chain = _constant(op.input_value(1).get_node())
        weight = chain[-1]
        if weight.get_type_name() != "Constant" or len(weight.get_output_partial_shape(0)) < 2:
            continue  # activation by activation
        key = [op.get_friendly_name(), *sorted(op.output(0).get_names())]
        name = next((names[k] for k in key if k in names), None) or module_of(key[0]) or key[0]
        acts_node = op.input_value(0).get_node()
        if acts_node.get_type_name() == "FakeQuantize":
            acts, how = "int8-static", f"activations int8 per tensor, calibrated (FakeQuantize, " \
                                       f"{acts_node.get_attributes().get('levels')} levels)"
        elif acts_node.get_type_name() == "FakeConvert":
            kind = str(acts_node.get_attributes().get("destination_type", "f8e4m3"))
            acts, how = OV_TYPES.get(kind, "fp8-e4m3"), f"activations {kind} per tensor (FakeConvert, emulated)"
        else:
            acts, how = "float", ""
        stored = weight.get_element_type().get_type_name()
        if stored not in OV_TYPES:
            layers.setdefault(name, LayerScheme("float", acts, why=reasons.get(op.get_friendly_name())
                                                or f"kept float by {method}"))
            continue
        scale = next((n.input_value(1).get_node() for n in chain if n.get_type_name() == "Multiply"), None)
        shape = list(weight.get_output_partial_shape(0).to_shape())
        scale_size = 1 if scale is None else int(math.prod(scale.get_output_partial_shape(0).to_shape()))
        grain, block = ("block", shape[-1]) if len(shape) == 3 else (
            ("per-tensor", None) if scale_size == 1 else ("per-channel", None))
        symmetric = not any(n.get_type_name() == "Subtract" for n in chain)
        how = how or "weights only (NNCF weight compression), activations float"
        layers.setdefault(name, LayerScheme(OV_TYPES[stored], acts, grain, block, symmetric, how))
    extra = list(transforms) + ([_tables(tables, "(NNCF weight compression)")] if tables else [])
    extra += ["SmoothQuant scales (NNCF) on the activations feeding the Linear layers"] if smoothed else []
    return LayerPlan(method, "openvino", in_order(layers), tuple(extra))


def plan_from_graph(fmt: str, path: Path, method: str, parent: Path | None = None,
                    float_reasons: dict[str, str] | None = None, transforms: tuple[str, ...] = ()) -> LayerPlan | None:
    """The plan of a graph of format `fmt` (None for a format that has no layer plan: pytorch, gguf)."""
    readers = {"onnx": plan_from_onnx, "openvino": plan_from_openvino}
    if fmt not in readers:
        return None
    return readers[fmt](Path(path), method, parent, float_reasons, transforms)
