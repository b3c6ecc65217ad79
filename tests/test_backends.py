"""Cross-backend templates (as NNCF's tests/cross_fw): one test body per algorithm, run on an ONNX and an OpenVINO
parent of the same tiny model (stories260K), asserting the same observable contract on both."""

import numpy as np
import pytest

from qdeploy import exporters, models, quantization, runtimes
from qdeploy.calibration import CalibrationSource
from qdeploy.errors import ConfigError
from qdeploy.layer_plan import LayerPlan, read_plan
from qdeploy.layer_plan_graph import plan_from_graph
from qdeploy.quantization.backends import backend

from .conftest import SHARED, SST2_MODEL, STORIES

CALIBRATION = CalibrationSource(str(SHARED / "data" / "tinystories" / "valid-head.txt"), samples=16, max_length=64)
RUNTIME = {"onnx": "ort-cpu", "openvino": "openvino-cpu"}
LAYERS = 5  # stories260K's blocks: one feed-forward down-projection each
FFN = 2 * LAYERS  # the gate projection (before SiLU) and the down one (after it); up only meets them in a product


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    source = models.resolve(str(STORIES))
    out = tmp_path_factory.mktemp("stories")
    return {fmt: exporters.export(source, "text-generation", fmt, out / fmt) for fmt in RUNTIME}


def _quantize(parents, fmt, method, options, tmp_path):
    artifact = quantization.quantize(parents[fmt], quantization.make_config(method, options), tmp_path / method,
                                     CALIBRATION)
    assert artifact.format == fmt and artifact.manifest.method["name"] == method
    settings = backend(fmt).runtime_config()
    for key, defaults in settings.items():  # the format's defaults, once (a QDQ graph may add what it needs to load)
        assert {k: artifact.manifest.runtime_config[key][k] for k in defaults} == defaults
    assert "decoder" in artifact.manifest.runtime_config  # the cache layout travels with the weights
    decoder = runtimes.load(artifact, RUNTIME[fmt])
    assert decoder.generate(np.array([[1, 403, 407, 261, 378]]), max_new_tokens=4).shape == (1, 4)
    return artifact


def _linear_names(parent) -> set[str]:
    """The Linear layers whose weights are a float matrix in the written graph: all of them in an fp32 parent, the
    ones a method left float in a quantized artifact (read from the graph, not from its notes)."""
    return {layer.name for layer in backend(parent.format).read(parent.model_path).linears()}


def _plan(artifact) -> LayerPlan:
    """The layer plan the artifact carries (layers.json, read back from its graph when it was written)."""
    plan = read_plan(artifact.directory, artifact.manifest)
    assert plan is not None and plan.method == artifact.manifest.method["name"]
    return plan


def _floats(plan: LayerPlan) -> dict[str, str]:
    """The layers a plan says kept float weights, with why."""
    return {name: scheme.why for name, scheme in plan.layers.items() if not scheme.quantized}


def _modules(parent) -> dict[str, str]:
    """Each Linear layer's node name (what backends and quantizers call it) -> the PyTorch module a plan names it by,
    from the float parent's plan read with each node's own name given as the reason it is float."""
    names = _linear_names(parent)
    plan = plan_from_graph(parent.format, parent.model_path, "fp32", float_reasons={n: n for n in names})
    found = {scheme.why: module for module, scheme in plan.layers.items() if scheme.why in names}
    assert set(found) == names, names - set(found)
    return found


@pytest.mark.parametrize("fmt", RUNTIME)
def test_smoothquant_keeps_the_down_projections_float_unless_asked(parents, fmt, tmp_path):
    artifact = _quantize(parents, fmt, "smoothquant", {}, tmp_path)
    assert artifact.precision == "int8"
    graph = backend(fmt).read(parents[fmt].model_path)  # OpenVINO keeps the tied LM head as one more Linear layer
    total, groups = len(graph.linears()), len(graph.groups())
    # the down-projections are the Linear layers that read the intermediate width
    import json

    width = json.loads((parents[fmt].directory / "config.json").read_text())["intermediate_size"]
    floats = backend(fmt).read(artifact.model_path).linears()
    assert len(floats) == LAYERS and {layer.weight.shape[0] for layer in floats} == {width}, \
        [(layer.name, layer.weight.shape) for layer in floats]
    plan = _plan(artifact)  # the same layers float in the plan, named by module, and why
    modules = _modules(parents[fmt])
    assert _floats(plan) == {modules[layer.name]: "feed-forward down-projection: reads the activation function's "
                             "output (ffn_down_int8=false)" for layer in floats}
    assert set(_floats(plan)) == {f"model.layers.{i}.mlp.down_proj" for i in range(LAYERS)}
    # every other Linear layer static int8 (ONNX's tied head reads the int8 embedding table: weights only)
    static = {name for name, s in plan.layers.items() if (s.weights, s.activations) == ("int8", "int8-static")}
    assert static == {modules[n] for n in _linear_names(parents[fmt])} - set(_floats(plan)), plan.summary()
    assert len(plan.layers) == total + (fmt == "onnx")  # the tied head is no Linear layer of ONNX's float graph
    assert f"SmoothQuant: {groups} activations divided by per-channel scales" in plan.transforms[0]


@pytest.mark.parametrize("fmt", RUNTIME)
def test_outlier_names_the_layers_it_keeps_float(parents, fmt, tmp_path):
    artifact = _quantize(parents, fmt, "outlier", {"threshold": 3.0}, tmp_path)
    assert artifact.precision == "int8-mixed"
    kept = sorted(_linear_names(artifact))
    total = len(_linear_names(parents[fmt]))
    assert 0 < len(kept) < total and set(kept) <= _linear_names(parents[fmt])
    modules = _modules(parents[fmt])
    plan = _plan(artifact)  # the plan names the layers the graph keeps float, each with the input peak that did it
    assert set(_floats(plan)) == {modules[name] for name in kept}, plan.summary()
    assert all(why.endswith("above the outlier threshold 3.0") for why in _floats(plan).values()), _floats(plan)
    assert {s.weights for s in plan.layers.values() if s.quantized} == {"int8"}
    assert len(plan.quantized) == total - len(kept) + (fmt == "onnx")  # and ONNX's tied head, int8 with the table


@pytest.mark.parametrize("fmt", RUNTIME)
def test_outlier_keeps_the_lm_head_float_when_asked(parents, fmt, tmp_path):
    """LLM.int8's checkpoints keep the output projection float: the Linear layer producing the logits (not the cache
    outputs), found from the graph. stories260K ties it to the embedding table: the ONNX export reads it through a
    Transpose, so lm_head_float cannot keep it float there: it reads the table static int8 quantizes, and the plan
    says so (the notes claim "float already"); OpenVINO folds it into one more Linear layer, which stays float."""
    head = backend(fmt).head_layers(parents[fmt].model_path)
    assert head <= _linear_names(parents[fmt]) and len(head) == {"onnx": 0, "openvino": 1}[fmt]
    artifact = _quantize(parents, fmt, "outlier", {"threshold": 1e6, "lm_head_float": True}, tmp_path)
    assert _linear_names(artifact) == head
    plan = _plan(artifact)
    if head:
        assert _floats(plan) == {"lm_head": "output layer kept float (lm_head_float)"}
    else:  # ONNX: the head reads the embedding table, which static int8 quantizes: the plan says the head is int8
        assert not _floats(plan) and plan.layers["lm_head"].weights == "int8"
        assert "shared with the embedding table" in plan.layers["lm_head"].why
    assert len(plan.quantized) == len(plan.layers) - len(head) == 36 - len(head)


@pytest.mark.parametrize("fmt", RUNTIME)
def test_fp8_keeps_the_feed_forward_layers_float_when_asked(parents, fmt, tmp_path):
    artifact = _quantize(parents, fmt, "fp8", {"ffn_fp8": False}, tmp_path)
    assert artifact.precision == "fp8-e4m3"
    assert len(_linear_names(artifact)) == FFN
    plan = _plan(artifact)
    modules = _modules(parents[fmt])
    assert set(_floats(plan)) == {modules[n] for n in _linear_names(artifact)} == {
        f"model.layers.{i}.mlp.{p}" for i in range(LAYERS) for p in ("gate_proj", "down_proj")}
    assert all(why.startswith("feed-forward layer (fp8 ffn_fp8=false)") for why in _floats(plan).values())
    # the other Linear layers read fp8 activations: int8 weights on ONNX, fp8 ones on OpenVINO
    fp8 = {name for name, s in plan.layers.items() if s.quantized and s.activations == "fp8-e4m3"}
    assert fp8 == {modules[n] for n in _linear_names(parents[fmt])} - set(_floats(plan))
    assert {plan.layers[n].weights for n in fp8} == {{"onnx": "int8", "openvino": "fp8-e4m3"}[fmt]}


def _fused_kernels(artifact) -> int:
    """MatMulNBits kernels that run several sibling projections at once, read from the written graph."""
    import onnx

    graph = onnx.load(str(artifact.model_path)).graph
    return sum(n.op_type == "MatMulNBits" and n.doc_string.startswith("fused:") for n in graph.node)


@pytest.mark.parametrize("fmt", RUNTIME)
def test_weight_int4(parents, fmt, tmp_path):
    artifact = _quantize(parents, fmt, "weight-int4", {}, tmp_path)
    assert artifact.precision == "int4-weights"
    # NNCF keeps 8-bit weights where no group size divides the width (stories260K's 172-wide down-projections);
    # MatMulNBits pads instead, and keeps the embedding table and the head 8-bit (the tied head gets a weight of its
    # own for that). Read from the plan and the graph.
    plan = _plan(artifact)
    eight = {name for name, s in plan.layers.items() if s.weights == "int8"}
    assert len(plan.layers) == 36 and not _floats(plan)
    assert eight == ({"lm_head"} if fmt == "onnx" else {f"model.layers.{i}.mlp.down_proj" for i in range(LAYERS)})
    assert {(s.weights, s.grain) for s in plan.layers.values() if s.weights == "int4"} == {("int4", "block 32")}
    if fmt == "onnx":  # and the query/key/value and gate/up kernels fused (tests/test_engines.py reads the graph)
        import onnx

        ops = {n.op_type for n in onnx.load(str(artifact.model_path)).graph.node}
        assert plan.layers["lm_head"].grain == "block 32" and "GatherBlockQuantized" in ops and _fused_kernels(artifact)
        assert not _float_matrices(artifact)
        # heads of 8 cannot become GroupQueryAttention: the exported layout stays (tests/test_genai_form.py)
        assert "GroupQueryAttention" not in ops and "RMSNormalization" in ops


def _float_matrices(artifact) -> list[str]:
    """The fp32 weight matrices left in an ONNX artifact (a constant over 16 in both dimensions)."""
    import onnx

    graph = onnx.load(str(artifact.model_path)).graph
    return [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
            and min(i.dims) > 16]


@pytest.mark.parametrize("fmt", RUNTIME)
def test_weight_int4_keeps_excluded_layers_float(parents, fmt, tmp_path):
    """What auto mode=weight-int4 relies on: a layer it sends back to float really stays float."""
    from qdeploy.quantization.algorithms.weight_int4 import WeightInt4

    # not the tied lm_head: on OpenVINO it shares its constant with the embedding table, which is compressed anyway
    keep = sorted(_linear_names(parents[fmt]) - backend(fmt).head_layers(parents[fmt].model_path))[0]
    (tmp_path / "out").mkdir()
    backend(fmt).weight_int4(parents[fmt].model_path, WeightInt4(), tmp_path / "out", CALIBRATION, None,
                             parents[fmt], exclude=[keep])
    float_layers = {layer.name for layer in backend(fmt).read(tmp_path / "out" / backend(fmt).model_file).linears()}
    assert keep in float_layers and len(float_layers) < len(_linear_names(parents[fmt]))


def test_nncf_mixed_4_and_8_bit_names_the_layers_that_fell_back(parents, tmp_path):
    artifact = _quantize(parents, "openvino", "nncf-weight-int4", {"ratio": 0.6}, tmp_path)
    plan = _plan(artifact)
    bits = {name: s.weights for name, s in plan.layers.items()}
    four, backup = [n for n, b in bits.items() if b == "int4"], [n for n, b in bits.items() if b == "int8"]
    assert len(four) + len(backup) == len(bits) == 36 and 0 < len(backup) < len(bits), plan.summary()
    # each layer that fell back named, as the IR's constants say (the weight types NNCF wrote, by node name)
    import openvino as ov

    from qdeploy.quantization.backends.openvino import weight_types

    written = weight_types(ov.Core().read_model(str(artifact.model_path)))
    modules = _modules(parents["openvino"])
    assert set(backup) == {modules[n] for n, kind in written.items() if "4" not in kind}


def _openvino_ops(artifact) -> list:
    import openvino as ov

    return list(ov.Core().read_model(str(artifact.model_path)).get_ordered_ops())


@pytest.mark.parametrize("fmt", RUNTIME)
def test_weight_int8_is_8_bit_weights_with_level_4_activations_on_onnx_and_float_activations_on_openvino(
        parents, fmt, tmp_path):
    """One name, two schemes, each read from the written graph: on ONNX every projection is a MatMulNBits of 8 bits
    at accuracy level 4, which rounds the activations to int8 per block of 32 at run time; on OpenVINO the weights
    are int8 constants decompressed in the graph and no activation is quantized (no FakeQuantize)."""
    import onnx

    artifact = _quantize(parents, fmt, "weight-int8", {}, tmp_path)
    assert artifact.precision == "int8-weights"
    assert not _linear_names(artifact)  # no float weight matrix left, the head included
    # every weight matrix int8, the embedding table and the tied head included (ONNX gives the head its own weight)
    assert artifact.size_mb() < 0.6 * parents[fmt].size_mb()  # stories260K: its tokenizer files are a third of it
    if fmt == "onnx":
        nodes = [n for n in onnx.load(str(artifact.model_path)).graph.node if n.op_type == "MatMulNBits"]
        levels = {(a.name, onnx.helper.get_attribute_value(a)) for n in nodes for a in n.attribute
                  if a.name in ("bits", "accuracy_level")}
        assert nodes and levels == {("bits", 8), ("accuracy_level", 4)}, levels
        assert not _float_matrices(artifact) and _fused_kernels(artifact)
        assert not [n for n in onnx.load(str(artifact.model_path)).graph.node
                    if n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear")]
    else:
        ops = _openvino_ops(artifact)
        assert not [op for op in ops if op.get_type_name() == "FakeQuantize"]
        import openvino as ov

        int8 = [op for op in ops if op.get_type_name() == "Constant"
                and op.get_element_type() in (ov.Type.u8, ov.Type.i8)
                and len(op.get_output_shape(0)) == 2 and min(op.get_output_shape(0)) > 1]
        assert len(int8) >= len(_linear_names(parents[fmt]))


def test_aliases_are_the_same_algorithm_with_their_own_defaults():
    for alias, name, fmt in [("nncf-smoothquant", "smoothquant", "openvino"), ("nncf-outlier", "outlier", "openvino"),
                             ("nncf-fp8", "fp8", "openvino"), ("nncf-weight-int4", "weight-int4", "openvino"),
                             ("ort-weight-int4", "weight-int4", "onnx"),
                             ("nncf-weight-int8", "weight-int8", "openvino")]:
        assert quantization.method(alias).apply is quantization.method(name).apply
        assert quantization.method(alias).formats == (fmt,) and name in quantization.method(name).description
        assert alias in quantization.method(name).description
    assert quantization.method("smoothquant").formats == ("onnx", "openvino")
    assert quantization.make_config("smoothquant").ffn_down_int8 is False
    assert quantization.make_config("nncf-smoothquant").ffn_down_int8 is True  # every Linear layer, as it always did


@pytest.mark.parametrize("method,options,message", [
    ("smoothquant", {"alpha": 1.5}, "alpha must be within"),
    ("nncf-smoothquant", {"alpha": -0.1}, "alpha must be within"),
    ("outlier", {"threshold": 0}, "threshold must be positive"),
    ("nncf-outlier", {"threshold": -1}, "threshold must be positive"),
    ("weight-int4", {"ratio": 0}, "ratio must be in"),
    ("ort-weight-int4", {"group_size": 24}, "power of two"),
    ("weight-int8", {"group_size": 24}, "power of two"),
    ("nncf-weight-int8", {"mode": "int4"}, "mode"),
    ("smoothquant", {"preset": "performance"}, "preset: not a setting of the onnx backend"),
    ("nncf-outlier", {"per_channel": False}, "per_channel: not a setting of the openvino backend"),
    ("nncf-weight-int4", {"accuracy_level": 0}, "accuracy_level: not a setting of the openvino backend"),
])
def test_a_bad_option_fails_when_the_config_is_made(method, options, message):
    with pytest.raises(ConfigError, match=message):
        quantization.make_config(method, options)


def test_another_backends_option_is_refused_for_the_parent_actually_given(parents, tmp_path):
    config = quantization.make_config("outlier", {"per_channel": False})  # fine on ONNX, where a run puts it
    with pytest.raises(ConfigError, match="per_channel"):
        quantization.quantize(parents["openvino"], config, tmp_path / "o", CALIBRATION)


def test_a_plan_runs_one_algorithm_on_each_format_it_names():
    from qdeploy import pipeline
    from qdeploy import plan as plans

    plan = plans.from_dict({"model": str(SST2_MODEL), "methods": [
        {"name": "smoothquant", "format": ["onnx", "openvino"]},
        {"name": "outlier", "format": "openvino", "options": {"preset": "mixed"}}, "nncf-ptq"]})
    assert [(m.variant, m.format) for m in plan.methods] == [
        ("smoothquant-onnx", "onnx"), ("smoothquant-openvino", "openvino"), ("outlier", "openvino"), ("nncf-ptq", None)]
    assert plans.from_dict(plan.to_dict()) == plan  # --resume reads the plan back
    checked = pipeline.check(plan)
    assert [(v, n, f) for v, n, _, f in checked.method_configs] == [
        ("smoothquant-onnx", "smoothquant", "onnx"), ("smoothquant-openvino", "smoothquant", "openvino"),
        ("outlier", "outlier", "openvino"), ("nncf-ptq", "nncf-ptq", "openvino")]
    for bad, message in (({"name": "ort-static", "format": "openvino"}, "works on onnx artifacts, not openvino"),
                         ({"name": "smoothquant", "options": {"preset": "mixed"}}, "not a setting of the onnx")):
        with pytest.raises(ConfigError, match=message):
            pipeline.check(plans.from_dict({"model": str(SST2_MODEL), "methods": [bad]}))


STORIES_TEXT = SHARED / "data" / "tinystories" / "valid-head.txt"  # the calibration text, scored by perplexity


# Perplexity on the calibration text, fp32 3.193 on both formats; all-int8 loses 0.057 on ONNX Runtime and ~10 on
# OpenVINO, whose first candidates within these tolerances keep 4 (+0.037) and 16 (+0.074) layers float (AMD EPYC
# Zen 2): each tolerance lies about 0.01 from the candidates on either side of it.
AUTO_TOLERANCE = {"onnx": 0.047, "openvino": 0.085}


@pytest.mark.parametrize("fmt", RUNTIME)
def test_auto_falls_back_to_float_until_the_tolerance_is_met(parents, fmt, tmp_path):
    """A tolerance that all-int8 misses and an int8 candidate meets: what is written keeps some layers float and the
    rest int8 (read from the graph), and scores within the tolerance when the test scores it itself."""
    from qdeploy import evaluation
    from qdeploy.tasks import for_generation
    from transformers import AutoTokenizer

    options = {"eval": str(STORIES_TEXT), "metric": "perplexity", "tolerance": AUTO_TOLERANCE[fmt]}
    artifact = _quantize(parents, fmt, "auto", options, tmp_path)
    total = len(_linear_names(parents[fmt]))
    floats = _linear_names(artifact)
    plan = _plan(artifact)
    assert 0 < len(floats) < total, (len(floats), total, plan.summary())
    assert floats <= _linear_names(parents[fmt])
    modules = _modules(parents[fmt])  # the plan names them, and why: the search's sensitivity ranking
    assert set(_floats(plan)) == {modules[n] for n in floats}
    assert all(why.startswith("sensitive: simulated SQNR") for why in _floats(plan).values())
    result = artifact.manifest.method["result"]  # what the search found, as it recorded it
    assert result["met"] and result["tolerance"] == AUTO_TOLERANCE[fmt] and result["float_layers"] == len(floats)
    assert result["tried"][0]["float_layers"] == 0 and len(result["tried"]) >= 2  # all-int8 first, and missed
    perplexity = evaluation.metric("perplexity")
    ctx = evaluation.EvalContext(for_generation(AutoTokenizer.from_pretrained(str(STORIES))),
                                 ["input_ids", "attention_mask"], max_positions=512)
    fp32, chosen = (perplexity.evaluate(runtimes.load(a, RUNTIME[fmt]), ctx, str(STORIES_TEXT)).value
                    for a in (parents[fmt], artifact))
    assert chosen - fp32 <= AUTO_TOLERANCE[fmt] + 1e-6, (fp32, chosen)
    assert chosen > fp32  # int8 layers remain, and they cost something: not the fp32 graph under another name


@pytest.mark.parametrize("fmt", RUNTIME)
def test_auto_weight_int4_names_the_layers_that_fell_back(parents, fmt, tmp_path):
    """Weight-only 4-bit with the accuracy-aware fallback: the same search, 4-bit group-wise weights instead of int8,
    ranked by simulated 4-bit weight error; the layers that fell back are named, least safe first."""
    # all-4-bit loses 0.35 perplexity on both formats; the first candidates within 0.21 keep 16 (ONNX, +0.18) and 32
    # (OpenVINO, +0.13) layers float, the ones before them lose 0.25 and 0.24 (AMD EPYC Zen 2). Tolerance 0 would be
    # met only with every layer float: a "4-bit" artifact without a 4-bit layer, which this test once let pass.
    options = {"eval": str(STORIES_TEXT), "metric": "perplexity", "tolerance": 0.21, "mode": "weight-int4"}
    artifact = _quantize(parents, fmt, "auto", options, tmp_path)
    assert artifact.precision == "int4-mixed"
    floats = _linear_names(artifact)  # read from the graph
    assert floats <= _linear_names(parents[fmt]) and 0 < len(floats) < len(_linear_names(parents[fmt])), len(floats)
    plan = _plan(artifact)  # the rest 4-bit weights (or 8 where NNCF's group size fits no block), none static
    assert set(_floats(plan)) == {_modules(parents[fmt])[n] for n in floats}
    assert plan.dominant().weights == "int4" and artifact.manifest.method["result"]["mode"] == "weight-int4"
    assert {s.activations for s in plan.layers.values() if s.quantized} <= {"float", "int8-dynamic-block"}


def test_auto_refuses_dynamic_int8_on_openvino_before_any_work(parents, tmp_path):
    config = quantization.make_config("auto", {"eval": str(STORIES_TEXT), "mode": "dynamic"})  # fine on ONNX
    with pytest.raises(ConfigError, match="mode: not a setting of the openvino backend"):
        quantization.quantize(parents["openvino"], config, tmp_path / "a", CALIBRATION)
    assert not (tmp_path / "a").exists()
    assert quantization.method("nncf-auto").apply is quantization.method("auto").apply
    assert quantization.method("auto").formats == ("onnx", "openvino") and "nncf-auto" in \
        quantization.method("auto").description
