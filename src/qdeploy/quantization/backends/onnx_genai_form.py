"""A decoder graph in the form ONNX Runtime GenAI's model builder writes: each opset-23 `Attention` with the
`RotaryEmbedding` of its query and key, the cache `Concat`s and the head reshapes around it becomes one
com.microsoft `GroupQueryAttention` (rotary inside, cos/sin caches as initializers, the cache in and out as before),
and each residual `Add` feeding an `RMSNormalization` becomes one `SkipSimplifiedLayerNormalization`.

Why: at batch 1 a decode step of a small model is a few hundred small kernels. The exported attention block is about
fifteen of them per layer (reshapes, transposes, two rotaries, two concats copying the whole cache, the mask
arithmetic), GroupQueryAttention is one; and it lets ONNX Runtime GenAI keep past and present in one buffer
(`past_present_share_buffer`), so the cache is not copied every step.

What stays the same: the graph's input and output names (`input_ids`, `attention_mask`, `position_ids`,
`past_key_values.N.key/value`, `logits`, `present.N.key/value`), so qdeploy's own loop (separate past and present,
the cache growing each step) and the engine (one shared buffer) both run it.

Positions and padding. GroupQueryAttention numbers positions itself: the new tokens of a row sit after its
`seqlens_k + 1 - new` cached ones. `seqlens_k` is the mask's full length less one for every row (not the count of its
ones), so each row's cache is laid out column for column as the mask is, left padding included, and the padding is
masked by an `attention_bias` (0, or the dtype's lowest value) built from `attention_mask`. A left-padded row's tokens
are then rotated at their column rather than at `position_ids` (their column less the padding): the same shift for
every token of the row, which rotary attention does not see (scores depend on the difference of positions) beyond
rounding. The `position_ids` input stays (unused) so that every caller's feed still fits. Positions that are not the
columns of a left-padded mask (packed sequences, padding in the middle) are not represented.

The rotary caches are read from the graph: the subgraph that computes the cos and sin fed to `RotaryEmbedding` from
`position_ids` is run for positions 0..max_positions-1, so the model's own frequencies and scaling are what
GroupQueryAttention uses, bit for bit as the exported graph computes them.

All or nothing for attention: unless every `Attention` node matches the exported layout (below), none is rewritten
(past and present can share one buffer only if every layer's cache goes through GroupQueryAttention). ONNX
Runtime's GroupQueryAttention rotates only heads whose size is a multiple of 16 (SmolLM2: 64; stories260K: 8, left
alone). The residual norms are fused either way.

Where the query, key and value come from one fused projection (onnx_fusion's MatMulNBits and its Split, in either
order of the two rewrites) GroupQueryAttention takes it packed, and the Split goes.

    q3/k3/v3 [B,S,heads*H] (or a Split of one fused projection) -> Reshape [B,S,heads,H] -> Transpose(0,2,1,3)
    q, k -> RotaryEmbedding(x, cos, sin) (cos, sin [B,S,H/2] computed from position_ids alone; full rotary)
    present.k = Concat(past.k, k), present.v = Concat(past.v, v) on the sequence axis
    Attention(q, present.k, present.v, mask?) -> Transpose(0,2,1,3) -> Reshape [B,S,heads*H]
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

EXTERNAL_BYTES = 1_800_000_000  # as onnx_fusion: beyond this the weights go to a file beside the graph
MS = "com.microsoft"
PREFIX = "genai_form"


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """Producers, consumers, shapes and constants of a graph, for matching."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model, self.graph = model, model.graph
        self.producer = {out: node for node in self.graph.node for out in node.output if out}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.inputs = {i.name: i for i in self.graph.input}
        self.outputs = {o.name for o in self.graph.output}
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.shapes = {}
        self.types = {}
        for value in [*self.graph.value_info, *self.graph.input, *self.graph.output]:
            tensor = value.type.tensor_type
            self.types[value.name] = tensor.elem_type
            if tensor.HasField("shape"):
                self.shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        self._numpy = numpy_helper

    def const(self, name: str):
        """The value of an initializer or a Constant node's output, else None."""
        if name in self.initializers:
            return self._numpy.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _attrs(node).get("value")
            return None if value is None else self._numpy.to_array(value)
        return None

    def only(self, name: str, op_type: str):
        """The node producing `name` if it is an `op_type` of the default domain."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx") else None

    def sole_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None


def _heads_from(g: _Graph, name: str, head_size: int) -> tuple | None:
    """(3-D source, heads) of a BNSH tensor made as Transpose(0,2,1,3) of Reshape(x [B,S,heads*H] -> [B,S,heads,H])."""
    transpose = g.only(name, "Transpose")
    if transpose is None or list(_attrs(transpose).get("perm", [])) != [0, 2, 1, 3]:
        return None
    reshape = g.only(transpose.input[0], "Reshape")
    if reshape is None:
        return None
    source, split = reshape.input[0], g.shapes.get(reshape.output[0])
    if len(g.shapes.get(source) or []) != 3 or split is None or len(split) != 4 or split[3] != head_size:
        return None
    heads = split[2]
    width = g.shapes[source][2]
    if heads is None and width is not None:
        heads = width // head_size
    if heads is None or (width is not None and width != heads * head_size):
        return None
    return source, int(heads)


def _rotary(g: _Graph, name: str):
    """The RotaryEmbedding producing `name` when it is the plain form GroupQueryAttention can take over."""
    node = g.producer.get(name)
    if node is None or node.op_type != "RotaryEmbedding" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = _attrs(node)
    if len(node.input) != 3 or attrs.get("rotary_embedding_dim", 0) not in (0, None):
        return None  # with position_ids (a cos/sin table) or partial rotary: not the layout recognised here
    return node


def _past_concat(g: _Graph, name: str):
    """(past input, new BNSH tensor) of present = Concat(past, new) on the sequence axis."""
    concat = g.only(name, "Concat")
    if concat is None or len(concat.input) != 2 or _attrs(concat).get("axis") not in (2, -2):
        return None
    past, new = concat.input
    if past not in g.inputs:
        return None
    return concat, past, new


def _match(g: _Graph, attention) -> dict | None:
    """What one Attention node is made of, or None if it is not the exported layout."""
    attrs = _attrs(attention)
    if attention.domain not in ("", "ai.onnx") or len([o for o in attention.output if o]) != 1:
        return None
    if attrs.get("qk_matmul_output_mode", 0) or attrs.get("softcap", 0.0):
        return None
    inputs = list(attention.input) + [""] * (6 - len(attention.input))
    if inputs[4] or inputs[5] or len(attention.input) > 6:
        return None  # the cache is concatenated outside the node in qdeploy's graphs
    key_cat, value_cat = _past_concat(g, inputs[1]), _past_concat(g, inputs[2])
    if key_cat is None or value_cat is None:
        return None
    past_shape = g.shapes.get(key_cat[1])
    if not past_shape or len(past_shape) != 4 or past_shape[1] is None or past_shape[3] is None:
        return None
    kv_heads, head_size = past_shape[1], past_shape[3]
    if head_size % 16:
        return None  # ONNX Runtime's GroupQueryAttention rotates only heads of a multiple of 16 (stories260K: 8)
    q_rot, k_rot = _rotary(g, inputs[0]), _rotary(g, key_cat[2])
    if q_rot is None or k_rot is None:
        return None
    if _attrs(q_rot).get("interleaved", 0) != _attrs(k_rot).get("interleaved", 0):
        return None
    q, k, v = (_heads_from(g, name, head_size) for name in (q_rot.input[0], k_rot.input[0], value_cat[2]))
    if q is None or k is None or v is None or k[1] != kv_heads or v[1] != kv_heads or q[1] % kv_heads:
        return None
    # the output: Transpose(0,2,1,3) -> Reshape to [B,S,heads*H]
    out_t = g.sole_consumer(attention.output[0], "Transpose")
    if out_t is None or list(_attrs(out_t).get("perm", [])) != [0, 2, 1, 3]:
        return None
    out_r = g.sole_consumer(out_t.output[0], "Reshape")
    out_shape = g.shapes.get(out_r.output[0]) if out_r is not None else None
    if out_shape is None or len(out_shape) != 3 or out_shape[2] not in (None, q[1] * head_size):
        return None
    if attrs.get("is_causal", 0) == 0 and not inputs[3]:
        return None  # bidirectional: not a decoder's self-attention
    return {"attention": attention, "heads": q[1], "kv_heads": kv_heads, "head_size": head_size,
            "scale": attrs.get("scale"), "interleaved": int(_attrs(q_rot).get("interleaved", 0)),
            "q": q[0], "k": k[0], "v": v[0], "past_key": key_cat[1], "past_value": value_cat[1],
            "present_key": attention.input[1], "present_value": attention.input[2],
            "cos": [q_rot.input[1], k_rot.input[1]], "sin": [q_rot.input[2], k_rot.input[2]],
            "output": out_r.output[0], "remove": [attention, key_cat[0], value_cat[0], out_t, out_r]}


def _packed(g: _Graph, match: dict):
    """The fused projection when q, k and v are the three outputs, in order, of one Split of it on the last axis."""
    split = g.producer.get(match["q"])
    if split is None or split.op_type != "Split" or list(split.output) != [match["q"], match["k"], match["v"]]:
        return None
    if _attrs(split).get("axis") not in (-1, 2):
        return None
    sizes = g.const(split.input[1]) if len(split.input) > 1 and split.input[1] else _attrs(split).get("split")
    h = match["head_size"]
    if sizes is None or [int(s) for s in sizes] != [match["heads"] * h, match["kv_heads"] * h,
                                                    match["kv_heads"] * h]:
        return None
    return split.input[0]


def _subgraph(g: _Graph, targets: list[str]) -> tuple[list, set[str]] | None:
    """The nodes (in graph order) computing `targets`, and the graph inputs they read."""
    needed, stack, reads = set(), list(targets), set()
    while stack:
        name = stack.pop()
        if name in g.inputs:
            reads.add(name)
            continue
        node = g.producer.get(name)
        if node is None or id(node) in needed:
            if node is None and name not in g.initializers and name:
                return None
            continue
        needed.add(id(node))
        stack.extend(n for n in node.input if n)
        for attr in node.attribute:  # a subgraph (If/Loop) would hide what it reads: not expected here
            if attr.g.node or attr.graphs:
                return None
    return [n for n in g.graph.node if id(n) in needed], reads


def _rotary_caches(g: _Graph, names: list[str], max_positions: int) -> dict[str, np.ndarray] | None:
    """The cos/sin tensors fed to the RotaryEmbedding nodes, for positions 0..max_positions-1 at batch 1, computed by
    running the graph's own subgraph from position_ids; None if they depend on anything else."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    found = _subgraph(g, names)
    if found is None or "position_ids" not in found[1]:
        return None
    nodes, reads = found
    # Other inputs may be read for their shape only (the batch size, to expand the frequencies): fed at batch 1.
    others = sorted(reads - {"position_ids"})
    if any(user.op_type != "Shape" for name in others for user in g.consumers[name] if user in nodes):
        return None
    feeds = {}
    for name in others:
        tensor = g.inputs[name].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (1 if axis == 0 else 0)
                for axis, d in enumerate(tensor.shape.dim)]
        feeds[name] = np.zeros(dims, dtype=helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    used = {n for node in nodes for n in node.input}
    position = g.inputs["position_ids"]
    elem = position.type.tensor_type.elem_type
    graph = helper.make_graph(nodes, "rotary", [helper.make_tensor_value_info("position_ids", elem, [1, None]),
                                                *[g.inputs[name] for name in others]],
                              [helper.make_tensor_value_info(n, g.types.get(n, onnx.TensorProto.FLOAT), None)
                               for n in names],
                              [g.initializers[n] for n in used if n in g.initializers])
    sub = helper.make_model(graph, opset_imports=list(g.model.opset_import), ir_version=g.model.ir_version)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    values = session.run(names, {"position_ids": np.arange(max_positions, dtype=dtype)[None], **feeds})
    return dict(zip(names, values))


def _mask_inputs(g: _Graph, dtype: int, new_nodes: list, initializers: list) -> dict[str, str]:
    """seqlens_k (int32 [B]: the mask's length less one, every row), total_sequence_length (int32 scalar) and an
    attention bias ([B,1,S,T]: 0 where the mask is 1, the dtype's lowest where it is 0), from attention_mask."""
    from onnx import TensorProto, helper, numpy_helper

    p = PREFIX
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)

    def const(name, value):
        initializers.append(numpy_helper.from_array(np.asarray(value), f"{p}/{name}"))
        return f"{p}/{name}"

    one = const("one_i32", np.array(1, dtype=np.int32))
    lowest = const("lowest", np.array(np.finfo(np_dtype).min, dtype=np_dtype))
    zero = const("zero", np.array(0, dtype=np_dtype))
    axes_12 = const("axes_1_2", np.array([1, 2], dtype=np.int64))
    index_1 = const("index_1", np.array(1, dtype=np.int64))

    def add(op, inputs, out, **attributes):
        new_nodes.append(helper.make_node(op, inputs, [f"{p}/{out}"], name=f"{p}/{out}", **attributes))

    add("Shape", ["attention_mask"], "mask_shape")
    add("Gather", [f"{p}/mask_shape", index_1], "total_i64", axis=0)
    add("Cast", [f"{p}/total_i64"], "total_sequence_length", to=TensorProto.INT32)
    add("Sub", [f"{p}/total_sequence_length", one], "total_less_one")
    add("Shape", ["attention_mask"], "batch", start=0, end=1)
    add("Expand", [f"{p}/total_less_one", f"{p}/batch"], "seqlens_k")
    add("Cast", ["attention_mask"], "mask_bool", to=TensorProto.BOOL)
    add("Where", [f"{p}/mask_bool", zero, lowest], "bias_bt")
    add("Unsqueeze", [f"{p}/bias_bt", axes_12], "bias_b11t")
    # [B,1,S,T]: the bias is read per query row, S the new tokens of this call
    add("Shape", ["input_ids"], "new_len", start=1, end=2)
    add("Shape", ["attention_mask"], "mask_len", start=1, end=2)
    add("Shape", [f"{p}/bias_b11t"], "bias_dims", start=0, end=2)
    add("Concat", [f"{p}/bias_dims", f"{p}/new_len", f"{p}/mask_len"], "bias_shape", axis=0)
    add("Expand", [f"{p}/bias_b11t", f"{p}/bias_shape"], "attention_bias")
    return {"seqlens_k": f"{p}/seqlens_k", "total": f"{p}/total_sequence_length", "bias": f"{p}/attention_bias"}


def attention_to_gqa(model, max_positions: int) -> int:
    """Rewrite, in place, every opset-23 Attention (with the RotaryEmbedding of its query and key, the cache Concats
    and the head reshapes) into one com.microsoft GroupQueryAttention. Returns how many were rewritten: all of
    them, or 0 when any one is not the exported layout (or the graph has no attention_mask, input_ids or
    position_ids input)."""
    from onnx import helper, numpy_helper

    g = _Graph(model)
    attentions = [n for n in g.graph.node if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    if not attentions or not {"attention_mask", "input_ids", "position_ids"} <= set(g.inputs):
        return 0
    matches = [_match(g, node) for node in attentions]
    if any(m is None for m in matches):
        return 0
    caches = _rotary_caches(g, sorted({n for m in matches for n in m["cos"] + m["sin"]}), max_positions)
    if caches is None:
        return 0
    # one [max_positions, H/2] table per distinct cos/sin (usually one pair for the whole model)
    tables: dict[bytes, str] = {}
    initializers, new_nodes = [], []

    def table(name: str, kind: str, head_size: int):
        value = caches[name]
        if value.ndim != 3 or value.shape[0] != 1 or value.shape[-1] * 2 != head_size:
            return None
        value = np.ascontiguousarray(value[0])
        key = kind.encode() + value.tobytes()
        if key not in tables:
            tables[key] = f"{PREFIX}/{kind}_cache_{len(tables)}"
            initializers.append(numpy_helper.from_array(value, tables[key]))
        return tables[key]

    plans = []
    for m in matches:
        cos = [table(n, "cos", m["head_size"]) for n in m["cos"]]
        sin = [table(n, "sin", m["head_size"]) for n in m["sin"]]
        if None in cos or None in sin or cos[0] != cos[1] or sin[0] != sin[1]:
            return 0  # query and key rotated differently, or not full rotary: not what GQA computes
        plans.append((m, cos[0], sin[0]))
    dtype = g.types.get(matches[0]["q"]) or 1
    mask = _mask_inputs(g, dtype, new_nodes, initializers)
    gqa_nodes = {}
    for m, cos, sin in plans:
        packed = _packed(g, m)
        qkv = [packed, "", ""] if packed else [m["q"], m["k"], m["v"]]
        attrs = {"num_heads": m["heads"], "kv_num_heads": m["kv_heads"], "do_rotary": 1,
                 "rotary_interleaved": m["interleaved"]}
        if m["scale"] is not None:
            attrs["scale"] = float(m["scale"])
        name = f"{m['attention'].name or m['output']}/GroupQueryAttention"
        gqa_nodes[id(m["remove"][-1])] = helper.make_node(
            "GroupQueryAttention",
            [*qkv, m["past_key"], m["past_value"], mask["seqlens_k"], mask["total"], cos, sin, "", mask["bias"]],
            [m["output"], m["present_key"], m["present_value"]], name=name, domain=MS, **attrs)
    removed = {id(node) for m in matches for node in m["remove"]}
    kept = []
    for node in g.graph.node:
        if id(node) in gqa_nodes:
            kept.append(gqa_nodes[id(node)])
        if id(node) not in removed:
            kept.append(node)
    del g.graph.node[:]
    g.graph.node.extend(new_nodes + kept)
    g.graph.initializer.extend(initializers)
    _ensure_opset(model, MS)
    _prune(model)
    _sort(model)
    return len(matches)


def fuse_skip_rms_norm(model) -> int:
    """Each Add of two tensors of one shape feeding an RMSNormalization (last axis, float statistics) becomes one
    com.microsoft SkipSimplifiedLayerNormalization, whose fourth output is the sum (the residual stream). Returns
    how many pairs were fused."""
    from onnx import helper

    g = _Graph(model)
    fused = 0
    replace, drop = {}, set()
    for norm in g.graph.node:
        if norm.op_type != "RMSNormalization" or norm.domain not in ("", "ai.onnx") or len(norm.input) != 2:
            continue
        attrs = _attrs(norm)
        rank = len(g.shapes.get(norm.input[0]) or [])
        if attrs.get("stash_type", 1) != 1 or attrs.get("axis", -1) not in (-1, rank - 1):
            continue  # statistics in another precision, or over more than the last axis
        add = g.only(norm.input[0], "Add")
        if add is None or id(add) in drop or norm.input[1] not in g.initializers:
            continue
        a, b = (g.shapes.get(name) for name in add.input)
        if a is None or a != b or len(a) != 3 or len(g.initializers[norm.input[1]].dims) != 1:
            continue  # broadcasting adds are not a residual sum
        users = [u for u in g.consumers.get(add.output[0], []) if u is not norm]
        total = add.output[0] if users or add.output[0] in g.outputs else ""
        replace[id(add)] = helper.make_node(
            "SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], norm.input[1]],
            [norm.output[0], "", "", total], name=f"{norm.name or norm.output[0]}/SkipSimplified", domain=MS,
            epsilon=float(attrs.get("epsilon", 1e-5)))
        drop.update({id(add), id(norm)})
        fused += 1
    if fused:
        kept = []
        for node in g.graph.node:
            if id(node) in replace:
                kept.append(replace[id(node)])
            elif id(node) not in drop:
                kept.append(node)
        del g.graph.node[:]
        g.graph.node.extend(kept)
        _ensure_opset(model, MS)
        _sort(model)
    return fused


def pack_split_qkv(model) -> int:
    """GroupQueryAttention nodes fed query, key and value by one Split (of a projection fused after the attention
    was rewritten, as onnx_fusion does to a quantized child of a rewritten parent) take the fused tensor as packed
    QKV instead, and the Split goes. Returns how many nodes were repacked."""
    g = _Graph(model)
    packed = 0
    for node in g.graph.node:
        if node.op_type != "GroupQueryAttention" or node.domain != MS or not node.input[1] or not node.input[2]:
            continue
        attrs = _attrs(node)
        past = g.shapes.get(node.input[3]) or []
        if len(past) != 4 or past[3] is None:
            continue
        split = g.producer.get(node.input[0])
        if split is None or any(len(g.consumers.get(o, [])) != 1 or o in g.outputs for o in split.output):
            continue
        source = _packed(g, {"q": node.input[0], "k": node.input[1], "v": node.input[2], "head_size": past[3],
                             "heads": attrs["num_heads"], "kv_heads": attrs["kv_num_heads"]})
        if source is None:
            continue
        node.input[0], node.input[1], node.input[2] = source, "", ""
        packed += 1
    if packed:
        _prune(model)
    return packed


def to_genai_form(model, max_positions: int) -> int:
    """`attention_to_gqa`, `pack_split_qkv` and `fuse_skip_rms_norm`, in place; each finds nothing to do on a graph
    it has already rewritten. Returns the number of nodes rewritten (attention blocks, repacked attention inputs,
    residual norms); `uses_group_query_attention` says whether the cache may share one buffer."""
    return attention_to_gqa(model, max_positions) + pack_split_qkv(model) + fuse_skip_rms_norm(model)


def uses_group_query_attention(model) -> bool:
    """Every layer's cache goes through GroupQueryAttention (so ONNX Runtime GenAI may share past and present)."""
    ops = [(n.op_type, n.domain) for n in model.graph.node]
    return ("GroupQueryAttention", MS) in ops and not any(op == "Attention" and d in ("", "ai.onnx")
                                                        for op, d in ops)


def max_positions_of(directory: Path) -> int | None:
    """The longest sequence the model was made for: config.json's max_position_embeddings (or its like) beside the
    graph, else genai_config.json's context_length."""
    for file, keys in (("config.json", ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")),
                       ("genai_config.json", ())):
        path = directory / file
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if file == "genai_config.json":
            value = data.get("model", {}).get("context_length")
            return int(value) if isinstance(value, int) else None
        for key in keys:
            if isinstance(data.get(key), int):
                return int(data[key])
    return None


def to_genai_form_file(model_path, max_positions: int | None = None, whole: bool = False) -> int:
    """`to_genai_form` on a written graph, rewritten in place (its weights kept inline or external as they were);
    `max_positions` defaults to what `max_positions_of` reads beside it. Returns the number of nodes rewritten.
    whole: only when the attention becomes GroupQueryAttention (else the graph is left as it was: the norms alone
    buy little, and any change to a graph with int8 activations moves its near-tie tokens)."""
    import onnx

    model_path = Path(model_path)
    max_positions = max_positions or max_positions_of(model_path.parent)
    if not max_positions:
        return 0
    model = onnx.load(str(model_path))
    rewritten = attention_to_gqa(model, max_positions)
    if whole and not uses_group_query_attention(model):
        return 0
    rewritten += pack_split_qkv(model) + fuse_skip_rms_norm(model)
    if rewritten:
        external = model.ByteSize() > EXTERNAL_BYTES
        data = model_path.with_name(model_path.name + ".data")
        if data.exists():
            data.unlink()
        onnx.save(model, str(model_path), save_as_external_data=external, location=data.name if external else None)
    return rewritten


def _ensure_opset(model, domain: str) -> None:
    from onnx import helper

    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))


def _prune(model) -> None:
    """Drop the nodes nothing reads (what the rewritten blocks computed: rotary angles, the mask, reshapes) and the
    initializers and value_info no node reads any more."""
    graph = model.graph
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(out in live for out in node.output if out):
            keep.append(node)
            live.update(n for n in node.input if n)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    for init in [i for i in graph.initializer if i.name not in live]:
        graph.initializer.remove(init)
    produced = {o for node in graph.node for o in node.output}
    for info in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(info)


def _sort(model) -> None:
    """Topological order (stable: nodes keep their order where their inputs allow)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(n in ready for n in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("the rewritten graph has a cycle or reads a value nothing produces: "
                             + ", ".join(n.name for n in rest[:3]))
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
