"""The layer plan: its JSON form, its summary and differences, and the plans read back from real stories260K
artifacts of both formats (what the written graphs do, named by PyTorch module so that both formats line up)."""
import json

import pytest

from qdeploy.errors import InputError
from qdeploy.layer_plan import LAYERS_FILE, LayerPlan, LayerScheme, mark_differences, read_plan
from qdeploy.layer_plan_graph import module_of

from .conftest import SHARED, STORIES

BLOCK = LayerScheme("int8", "int8-dynamic-block", "block", 32, False,
                    "activations int8 per block of 32 at run time: ONNX Runtime accuracy_level 4")
CHANNEL = LayerScheme("int8", "float", "per-channel", None, False, "weights only (NNCF weight compression)")
LAYERS = [f"model.layers.{i}.{part}" for i in range(5) for part in ("self_attn.q_proj", "mlp.down_proj")]


def _plan(method="weight-int8", fmt="onnx", scheme=BLOCK, **overrides) -> LayerPlan:
    return LayerPlan(method, fmt, {**{name: scheme for name in LAYERS}, **overrides}, ("embedding table int8",))


def test_json_round_trip(tmp_path):
    plan = _plan(**{"lm_head": LayerScheme("float", why="kept float by weight-int8")})
    plan.save(tmp_path / LAYERS_FILE)
    again = LayerPlan.load(tmp_path / LAYERS_FILE)
    assert again == plan and again.layers["lm_head"].why == "kept float by weight-int8"
    data = json.loads(plan.to_json())
    assert data["schema"] == 1 and data["method"] == "weight-int8" and data["format"] == "onnx"
    assert data["layers"]["lm_head"] == {"weights": "float", "activations": "float", "why": "kept float by weight-int8"}
    assert data["layers"][LAYERS[0]]["block_size"] == 32


@pytest.mark.parametrize("text,message", [
    ('{"schema": 2, "method": "m", "layers": {}}', "layer plan schema 2 is not one this qdeploy reads (1)"),
    ('{"method": "m", "layers": {}}', "layer plan schema None"),
    ('[1, 2]', "a layer plan is a JSON object"),
    ('{"schema": 1, "layers": []}', "malformed layer plan"),
    ('{"schema": 1, "layers": {}, "extra": 1}', "unknown keys ['extra']"),
    ('{"schema": 1, "layers": {"fc": {"weights": "int3"}}}', "layer fc: weights 'int3': not one of"),
    ('{"schema": 1, "layers": {"fc": {"weights": "int8", "colour": "red"}}}', "layer fc:"),
    ('{"schema": 1, "layers": {"fc": "int8"}}', "layer fc: a layer is an object"),
    ('{"schema": 1,', "is not valid JSON"),
])
def test_a_bad_plan_file_is_one_clear_error(text, message, tmp_path):
    path = tmp_path / LAYERS_FILE
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        LayerPlan.load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_summary_names_the_dominant_scheme_and_the_exceptions():
    plan = _plan(fmt="openvino", scheme=CHANNEL, **{"lm_head": LayerScheme("float", why="tied")})
    assert plan.summary() == "w8 per-channel / a float, 10/11 layers quantized; w float / a float: lm_head"
    down = {name: LayerScheme("float", why="ffn") for name in LAYERS if "down" in name}
    assert _plan(**down).summary() == ("w8 block 32 / a int8-dynamic-block, 5/10 layers quantized; w float / a float: "
                                       "model.layers.*.mlp.down_proj x5")
    assert LayerPlan("fp16", "onnx", {"fc": LayerScheme("float")}).summary() == "all 1 layers float"


def test_differences_say_what_differs_and_on_how_many_layers():
    onnx, openvino = _plan(), _plan(fmt="openvino", scheme=CHANNEL)
    assert onnx.differences(onnx) == []
    assert onnx.differences(openvino) == ["activations int8-dynamic-block vs float on 10 layers",
                                          "granularity block 32 vs per-channel on 10 layers"]
    fewer = LayerPlan("m", "onnx", {name: BLOCK for name in LAYERS[:-1]}, onnx.transforms)
    assert onnx.differences(fewer) == ["1 layer only in the first: model.layers.4.mlp.down_proj"]
    floated = _plan(**{LAYERS[0]: LayerScheme("float")})
    assert onnx.differences(floated) == ["weights int8 vs float on 1 layer",
                                         "activations int8-dynamic-block vs float on 1 layer"]


def test_module_names_from_path_like_node_names():
    assert module_of("/model/bert/encoder/layer.0/attention/self/query/MatMul") == \
        "bert.encoder.layer.0.attention.self.query"
    assert module_of("__module.model.bert.encoder.layer.0.attention.self.query/aten::linear/MatMul") == \
        "bert.encoder.layer.0.attention.self.query"
    assert module_of("node_linear_3") is None


def test_an_encoder_ir_names_its_layers_without_reading_the_parent(sst2_openvino, tmp_path):
    """An IR converted from PyTorch carries module paths in its node names: the parent IR (read only for the module
    tags of an IR converted from ONNX) is not loaded, so a parent that is not there changes nothing."""
    from qdeploy.layer_plan_graph import plan_from_openvino

    plan = plan_from_openvino(sst2_openvino.model_path, "fp32", parent=tmp_path / "absent.xml")
    assert len(plan.layers) == 38 and "bert.encoder.layer.0.attention.self.query" in plan.layers
    assert not plan.quantized and "classifier" in plan.layers


# ---- plans read from real artifacts of stories260K (5 blocks of 7 Linear layers, and the tied lm_head) ----

CALIBRATION_TEXT = SHARED / "data" / "tinystories" / "valid-head.txt"
TOTAL = 36
METHODS = {("onnx", "weight-int8"): {}, ("openvino", "weight-int8"): {}, ("onnx", "ort-dynamic"): {},
           ("onnx", "ort-static"): {}, ("openvino", "nncf-ptq"): {"ignored_names": ["node_linear_6"]}}


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """stories260K exported to both formats, and quantized by each method of METHODS, side by side as in a run."""
    from qdeploy import exporters, models, quantization
    from qdeploy.calibration import CalibrationSource

    out = tmp_path_factory.mktemp("plans")
    source = models.resolve(str(STORIES))
    parents = {fmt: exporters.export(source, "text-generation", fmt, out / f"{fmt}-fp32") for fmt in ("onnx",
                                                                                                        "openvino")}
    calibration = CalibrationSource(str(CALIBRATION_TEXT), samples=16, max_length=64)
    made = {(fmt, "fp32"): parent for fmt, parent in parents.items()}
    for (fmt, method), options in METHODS.items():
        made[fmt, method] = quantization.quantize(parents[fmt], quantization.make_config(method, options, fmt),
                                                  out / f"{fmt}-{method}", calibration)
    return made


def _read(artifact) -> LayerPlan:
    plan = read_plan(artifact.directory, artifact.manifest)
    assert plan is not None and len(plan.layers) == TOTAL, plan
    return plan


def test_weight_int8_is_w8a8_per_block_on_onnx_and_weight_only_on_openvino(stories):
    onnx, openvino = _read(stories["onnx", "weight-int8"]), _read(stories["openvino", "weight-int8"])
    assert list(onnx.layers) == list(openvino.layers)  # one name per PyTorch module, in the same order
    assert {"model.layers.0.self_attn.q_proj", "model.layers.4.mlp.down_proj", "lm_head"} <= set(onnx.layers)
    assert {s.activations for s in onnx.layers.values()} == {"int8-dynamic-block"}
    assert all(s.grain == "block 32" and "accuracy_level 4" in s.why for s in onnx.layers.values())
    assert {(s.weights, s.activations, s.grain) for s in openvino.layers.values()} == {("int8", "float",
                                                                                        "per-channel")}
    assert onnx.differences(openvino)[:2] == [f"activations int8-dynamic-block vs float on {TOTAL} layers",
                                              f"granularity block 32 vs per-channel on {TOTAL} layers"]
    # the fused query/key/value and gate/up kernels are one node each in the graph, and still one layer each here
    assert any("MatMulNBits kernels" in t for t in onnx.transforms)


def test_ort_dynamic_quantizes_activations_at_run_time(stories):
    plan = _read(stories["onnx", "ort-dynamic"])
    linears = {name: s for name, s in plan.layers.items() if name != "lm_head"}
    assert {(s.weights, s.activations, s.grain) for s in linears.values()} == {("int8", "int8-dynamic",
                                                                                "per-channel")}
    # the tied head reads the int8 embedding table through a Transpose: int8 weights, float activations
    assert plan.layers["lm_head"].weights == "int8" and plan.layers["lm_head"].activations == "float"


def test_ort_static_lists_the_feed_forward_layers_it_kept_float(stories):
    plan = _read(stories["onnx", "ort-static"])
    floats = {name for name, s in plan.layers.items() if not s.quantized}
    assert floats == {f"model.layers.{i}.mlp.{p}" for i in range(5) for p in ("gate_proj", "down_proj")}
    assert all("ffn_int8=false" in plan.layers[name].why for name in floats)
    assert plan.layers["model.layers.0.mlp.up_proj"].activations == "int8-static"
    assert plan.layers["model.layers.0.self_attn.q_proj"] == LayerScheme(
        "int8", "int8-static", "per-channel", None, True, plan.layers["model.layers.0.self_attn.q_proj"].why)


def test_nncf_ptq_is_static_int8_with_the_ignored_layer_float(stories):
    plan = _read(stories["openvino", "nncf-ptq"])
    down = plan.layers["model.layers.0.mlp.down_proj"]
    assert down.weights == "float" and down.why == "excluded by the user (nncf-ptq ignored_names)"
    assert {s.activations for name, s in plan.layers.items() if s.quantized} == {"int8-static"}
    assert len(plan.quantized) == TOTAL - 1


def test_the_manifest_points_to_layers_json_and_hashes_it(stories):
    from qdeploy.artifact import Artifact, sha256_file

    artifact = stories["onnx", "weight-int8"]
    assert artifact.manifest.layer_plan == LAYERS_FILE
    assert artifact.manifest.files[LAYERS_FILE] == sha256_file(artifact.directory / LAYERS_FILE)
    Artifact.load(artifact.directory, verify=True)
    assert stories["onnx", "fp32"].manifest.layer_plan is None  # an export carries no plan
    written = (artifact.directory / LAYERS_FILE).read_bytes()
    try:
        (artifact.directory / LAYERS_FILE).write_text("{}", encoding="utf-8")
        with pytest.raises(InputError, match="does not match its sha256"):
            Artifact.load(artifact.directory, verify=True)
    finally:  # the other tests read the same artifact
        (artifact.directory / LAYERS_FILE).write_bytes(written)


def test_inspect_prints_the_plan_without_calibration_or_parent(stories, tmp_path, capsys):
    """An OpenVINO artifact (no SQNR analysis there) whose plan is read from layers.json, and a copy of it from
    before plans travelled (no layers.json, no parent beside it), whose plan is read from its graph."""
    import shutil

    from qdeploy.artifact import MANIFEST
    from qdeploy.cli import main

    source = stories["openvino", "nncf-ptq"].directory
    assert main(["inspect", str(source)]) == 0
    printed = capsys.readouterr().err  # tables go to stderr, stdout carries result paths only
    assert "w8 per-channel / a int8-static, 35/36 layers quantized" in printed
    assert "model.layers.0.mlp.down_proj" in printed and "excluded by the user" in printed
    assert "activation ranges and SQNR not measured" in printed

    old = tmp_path / "old"
    shutil.copytree(source, old)
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest["layer_plan"], manifest["files"][LAYERS_FILE]
    (old / LAYERS_FILE).unlink()
    (old / MANIFEST).write_text(json.dumps(manifest))
    assert main(["inspect", str(old)]) == 0
    printed = capsys.readouterr().err
    assert "model.layers.0.mlp.down_proj" in printed and "kept float by nncf-ptq" in printed


def test_reports_show_each_plan_and_how_two_rows_of_one_method_differ(stories):
    from qdeploy.report.markdown import render_markdown
    from qdeploy.work import variant_record

    variants = [variant_record(stories[fmt, "weight-int8"]) for fmt in ("onnx", "openvino")]
    mark_differences(variants)
    assert "plan_differences" not in variants[0]
    assert variants[1]["plan_differences"].startswith(
        f"vs onnx-weight-int8 (onnx): activations int8-dynamic-block vs float on {TOTAL} layers")
    text = render_markdown({"variants": variants})
    assert "## Layer plans" in text
    assert f"- openvino-weight-int8 (openvino): w8 per-channel / a float, {TOTAL}/{TOTAL} layers quantized; vs " \
           "onnx-weight-int8" in text
