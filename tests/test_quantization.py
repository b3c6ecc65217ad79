"""Every method of the end-to-end slice on the real SST-2 classifier: accuracy stays within a point of fp32."""
import onnx
import pytest

from qdeploy import evaluation, quantization, runtimes
from qdeploy.evaluation import stats
from qdeploy.artifact import Artifact
from qdeploy.calibration import CalibrationSource
from qdeploy.errors import ConfigError, UnsupportedError
from qdeploy.layer_plan import read_plan
from qdeploy.quantization.backends import backend

from .conftest import SHARED, SST2_DEV

CALIBRATION = CalibrationSource(str(SHARED / "data" / "sst2" / "train-sample.tsv"), samples=32)


def _score(artifact, runtime, path) -> evaluation.Score:
    from transformers import AutoTokenizer

    ctx = evaluation.EvalContext(AutoTokenizer.from_pretrained(str(artifact.directory)), list(artifact.manifest.inputs))
    return evaluation.metric("accuracy").evaluate(runtimes.load(artifact, runtime), ctx, path)


def _accuracy(artifact, runtime, path) -> float:
    return _score(artifact, runtime, path).value


@pytest.fixture(scope="module")
def sst2_dev():
    return SST2_DEV


def _dev_head(tmp_path_factory, rows: int):
    """The header and the first `rows` rows of SST-2 dev."""
    lines = SST2_DEV.read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("data") / f"dev-{rows}.tsv"
    path.write_text("\n".join(lines[:rows + 1]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sst2_dev_half(tmp_path_factory):
    return _dev_head(tmp_path_factory, 436)


@pytest.fixture(scope="module")
def fp32_accuracy(sst2_onnx, sst2_dev):
    return _score(sst2_onnx, "ort-cpu", sst2_dev)


@pytest.mark.parametrize("method,runtime", [("ort-dynamic", "ort-cpu"), ("ort-static", "ort-cpu"),
                                            ("nncf-ptq", "openvino-cpu"), ("nncf-weight-int8", "openvino-cpu")])
def test_int8_keeps_accuracy(method, runtime, sst2_onnx, sst2_openvino, sst2_dev, sst2_dev_half, fp32_accuracy,
                             tmp_path):
    parent = sst2_onnx if runtime == "ort-cpu" else sst2_openvino
    artifact = quantization.quantize(parent, quantization.make_config(method), tmp_path / method, CALIBRATION)
    assert artifact.manifest.method["name"] == method
    assert artifact.manifest.parent == parent.name
    assert artifact.size_mb() < 0.7 * parent.size_mb()
    Artifact.load(artifact.directory, verify=True)
    assert fp32_accuracy.value == pytest.approx(0.8865, abs=0.002)  # PyTorch fp32 on all 872 rows: 0.8865
    if runtime == "openvino-cpu":
        # OpenVINO int8 has no fast GEMM on CPUs without VNNI (2-3x slower than f32): half the dev set keeps the
        # suite fast. The full-set check is the README's `qdeploy run ... --eval accuracy=dev.tsv`.
        fp32_half = _accuracy(parent, runtime, sst2_dev_half)
        assert abs(_accuracy(artifact, runtime, sst2_dev_half) - fp32_half) <= 0.01 + 1e-9
    else:
        score = _score(artifact, runtime, sst2_dev)
        assert abs(score.value - fp32_accuracy.value) <= 0.01 + 1e-9
        # and within tolerance as the report judges it: sentence by sentence against fp32 (exact McNemar)
        metric = evaluation.metric("accuracy")
        pair = stats.paired(metric, score.items, fp32_accuracy.items)
        assert pair.n == 872 and pair.test.startswith("exact McNemar")
        assert stats.judge(metric, score.value, fp32_accuracy.value, pair).qualifies, pair


def test_static_default_keeps_feed_forward_in_float(sst2_onnx, tmp_path):
    from qdeploy.quantization.ort_methods import ffn_matmuls, weight_matmuls

    ffn = ffn_matmuls(sst2_onnx.model_path)
    assert len(ffn) == 12  # 6 layers x (up, down)
    assert ffn < set(weight_matmuls(sst2_onnx.model_path))
    artifact = quantization.quantize(sst2_onnx, quantization.make_config("ort-static"), tmp_path / "s", CALIBRATION)
    import onnx

    graph = onnx.load(str(artifact.model_path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    matmuls = {n.name: n for n in graph.node if n.op_type == "MatMul"}

    def fed_by_dequantize(name):
        return any(producer.get(i) == "DequantizeLinear" for i in matmuls[name].input)

    assert not any(fed_by_dequantize(name) for name in ffn)
    others = set(weight_matmuls(sst2_onnx.model_path)) - ffn
    assert len(others) == 24 and all(fed_by_dequantize(name) for name in others)


def test_method_options_are_typed():
    assert quantization.make_config("ort-static", {"per_channel": "false"}).per_channel is False
    with pytest.raises(ConfigError, match="unknown option.*bogus"):
        quantization.make_config("ort-dynamic", {"bogus": 1})
    with pytest.raises(ConfigError, match="must be one of minmax, entropy, percentile"):
        quantization.make_config("ort-static", {"calibration_method": "kl"})
    with pytest.raises(ConfigError, match="unknown method 'gptq'"):
        quantization.make_config("gptq")


def test_wrong_input_format_is_refused(sst2_onnx, tmp_path):
    with pytest.raises(UnsupportedError, match="needs an openvino artifact"):
        quantization.quantize(sst2_onnx, quantization.make_config("nncf-ptq"), tmp_path / "x")


def test_empty_calibration_file(sst2_onnx, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    from qdeploy.errors import InputError

    with pytest.raises(InputError, match="holds no text samples"):
        quantization.quantize(sst2_onnx, quantization.make_config("ort-static"), tmp_path / "x",
                              CalibrationSource(str(empty)))
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture(scope="module")
def sst2_dev_200(tmp_path_factory):
    return _dev_head(tmp_path_factory, 200)


@pytest.mark.slow
@pytest.mark.parametrize("method,options,runtime,max_drop", [
    ("outlier", {}, "ort-cpu", 0.02),
    ("smoothquant", {"alpha": 0.5}, "ort-cpu", 0.05),
    ("ort-weight-int4", {}, "ort-cpu", 0.05),
    ("nncf-weight-int4", {}, "openvino-cpu", 0.05),
])
def test_more_methods_on_the_real_classifier(method, options, runtime, max_drop, sst2_onnx, sst2_openvino,
                                            sst2_dev_200, tmp_path):
    parent = sst2_onnx if runtime == "ort-cpu" else sst2_openvino
    artifact = quantization.quantize(parent, quantization.make_config(method, options), tmp_path / method, CALIBRATION)
    Artifact.load(artifact.directory, verify=True)
    assert artifact.manifest.method["config"] == {**artifact.manifest.method["config"], **options}
    fp32 = _accuracy(parent, runtime, sst2_dev_200)
    assert _accuracy(artifact, runtime, sst2_dev_200) >= fp32 - max_drop


# The classifier's pooler and head: Gemm on ONNX, no Linear layer any method quantizes, float in every ONNX plan.
HEADS = {"bert.pooler.dense", "classifier"}


def _kept_float(artifact) -> dict[str, str]:
    """The layers an artifact's plan says stayed float, with why; on ONNX, less the HEADS (checked float)."""
    plan = read_plan(artifact.directory, artifact.manifest)
    floats = {name: scheme.why for name, scheme in plan.layers.items() if not scheme.quantized}
    if artifact.format == "onnx":
        assert HEADS <= set(floats), plan.summary()
        floats = {name: why for name, why in floats.items() if name not in HEADS}
    assert {s.weights for s in plan.layers.values() if s.quantized} <= {"int8", "int4"}, plan.summary()
    return floats


def test_outlier_threshold_decides_which_layers_stay_float(sst2_onnx, tmp_path):
    kept = {}
    for threshold in (8.0, 1000.0):
        artifact = quantization.quantize(sst2_onnx, quantization.make_config("outlier", {"threshold": threshold}),
                                         tmp_path / str(threshold), CALIBRATION)
        kept[threshold] = len(backend("onnx").read(artifact.model_path).linears())  # float weights, from the graph
        floats = _kept_float(artifact)  # the same layers float in the plan, each with the peak that kept it
        assert len(floats) == kept[threshold], sorted(floats)
        assert all(why.endswith(f"above the outlier threshold {threshold}") for why in floats.values()), floats
    assert kept[8.0] > kept[1000.0] == 0


def test_sensitivity_ranks_feed_forward_layers_first(sst2_onnx):
    from qdeploy.quantization.ort_methods import ffn_matmuls, weight_matmuls
    from qdeploy.quantization.sensitivity import layer_sqnr
    from transformers import AutoTokenizer

    nodes = weight_matmuls(sst2_onnx.model_path)
    batches = list(CALIBRATION.batches(AutoTokenizer.from_pretrained(str(sst2_onnx.directory)),
                                       list(sst2_onnx.manifest.inputs)))[:2]
    sqnr = layer_sqnr(sst2_onnx.model_path, nodes, batches)
    assert set(sqnr) == set(nodes)
    assert all(10.0 < v < 60.0 for v in sqnr.values())
    worst = sorted(nodes, key=sqnr.get)[:6]
    assert len(set(worst) & ffn_matmuls(sst2_onnx.model_path)) >= 3


def test_auto_needs_evaluation_data(sst2_onnx, tmp_path):
    with pytest.raises(ConfigError, match="auto needs evaluation data"):
        quantization.quantize(sst2_onnx, quantization.make_config("auto"), tmp_path / "a", CALIBRATION)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tolerance,met", [(0.003, True), (-0.05, False)])
def test_auto_fallback_meets_tolerance_or_says_so(tolerance, met, sst2_onnx, tmp_path):
    config = quantization.make_config("auto", {"eval": str(SST2_DEV), "tolerance": tolerance})
    artifact = quantization.quantize(sst2_onnx, config, tmp_path / "auto",
                                     CalibrationSource(str(SHARED / "data" / "sst2" / "train-sample.tsv"), samples=64))
    kept = len(backend("onnx").read(artifact.model_path).linears())  # float weights, read from the graph
    floats = _kept_float(artifact)  # named by the plan, with the search's reason
    assert len(floats) == kept and all(why.startswith("sensitive: simulated SQNR") for why in floats.values())
    result = artifact.manifest.method["result"]  # what the search recorded
    assert (result["met"], result["tolerance"], result["float_layers"]) == (met, tolerance, kept), result
    fp32 = _accuracy(sst2_onnx, "ort-cpu", SST2_DEV)
    if met:
        assert _accuracy(artifact, "ort-cpu", SST2_DEV) >= fp32 - 0.003
        assert kept < len(backend("onnx").read(sst2_onnx.model_path).linears())  # int8 layers remain
    else:
        assert _accuracy(artifact, "ort-cpu", SST2_DEV) < fp32 - tolerance  # what "not met" means, scored here


@pytest.mark.slow  # the alias of auto on OpenVINO: NNCF quantizes and the metric scores each candidate (~30 s)
def test_nncf_auto_meets_a_tight_tolerance_and_lists_float_layers(sst2_openvino, tmp_path):
    dev = tmp_path / "dev-200.tsv"
    dev.write_text("\n".join(SST2_DEV.read_text(encoding="utf-8").splitlines()[:201]) + "\n", encoding="utf-8")
    config = quantization.make_config("nncf-auto", {"eval": str(dev), "tolerance": 0.003})
    calibration = CalibrationSource(str(SHARED / "data" / "sst2" / "train-sample.tsv"), samples=64)
    artifact = quantization.quantize(sst2_openvino, config, tmp_path / "auto", calibration)
    result = artifact.manifest.method["result"]  # what the search recorded
    assert result["met"] and result["tolerance"] == 0.003, result
    floats = backend("openvino").read(artifact.model_path).linears()  # float weights, read from the graph
    assert 0 < len(floats) < 36  # some layers reverted to float, most stay int8
    assert len(_kept_float(artifact)) == len(floats) == result["float_layers"]  # and the plan lists them


def test_auto_dynamic_mode_with_a_relative_tolerance(sst2_onnx, sst2_dev_200, tmp_path):
    config = quantization.make_config("auto", {"eval": str(sst2_dev_200), "tolerance": 0.01, "relative": True,
                                               "mode": "dynamic"})
    artifact = quantization.quantize(sst2_onnx, config, tmp_path / "auto", CALIBRATION)
    result = artifact.manifest.method["result"]  # what the search recorded
    assert result["met"] and (result["tolerance"], result["relative"], result["mode"]) == (0.01, True, "dynamic")
    plan = read_plan(artifact.directory, artifact.manifest)  # the rest dynamic int8, read back from the graph
    assert {s.activations for s in plan.layers.values() if s.quantized} == {"int8-dynamic"}, plan.summary()
    assert len(_kept_float(artifact)) == result["float_layers"] and len(plan.quantized) == 36 - len(
        _kept_float(artifact))
    graph = onnx.load(str(artifact.model_path), load_external_data=False).graph
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger") for n in graph.node)
    assert not any(n.op_type == "QuantizeLinear" for n in graph.node)  # no static QDQ pairs
