"""Per-method quality on real models and real data, with the project's own metrics: SST-2 accuracy of the fine-tuned
MiniLM classifier (fp32 0.8865 on the 872 dev rows) and STS-benchmark Spearman of all-MiniLM-L6-v2 (fp32 82.03)."""
import pytest

from qdeploy import evaluation, exporters, models, quantization, runtimes
from qdeploy.calibration import CalibrationSource

from .conftest import SHARED, SST2_DEV, STSB_TEST

CALIBRATION = CalibrationSource(str(SHARED / "data" / "sst2" / "train-sample.tsv"), samples=128)
RUNTIME = {"onnx": "ort-cpu", "openvino": "openvino-cpu"}
ORT_STATIC = [("ort-static", {"calibration_method": m}) for m in ("minmax", "entropy", "percentile")]
# Every int8 method that calibrates activations, per input format.
INT8 = [("ort-dynamic", {}), *ORT_STATIC, ("smoothquant", {}), ("smoothquant", {"alpha": "search"}), ("outlier", {}),
        ("nncf-ptq", {}), ("nncf-smoothquant", {}), ("nncf-outlier", {})]


def _score(artifact, metric: str, path) -> float:
    from transformers import AutoTokenizer

    ctx = evaluation.EvalContext(AutoTokenizer.from_pretrained(str(artifact.directory)), list(artifact.manifest.inputs))
    return evaluation.metric(metric).evaluate(runtimes.load(artifact, RUNTIME[artifact.format]), ctx, path).value


def _quantized(parents, method, options, tmp_path):
    parent = parents[quantization.method(method).input_format]
    return quantization.quantize(parent, quantization.make_config(method, options), tmp_path / method, CALIBRATION)


@pytest.fixture(scope="module")
def sst2_parents(sst2_onnx, sst2_openvino):
    return {"onnx": sst2_onnx, "openvino": sst2_openvino}


@pytest.fixture(scope="module")
def dev_300(tmp_path_factory):
    """A fixed subset for the fast suite: the header and the first 300 dev rows."""
    lines = SST2_DEV.read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("data") / "dev-300.tsv"
    path.write_text("\n".join(lines[:301]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fp32_dev_300(sst2_onnx, dev_300):
    return _score(sst2_onnx, "accuracy", dev_300)


@pytest.mark.slow  # 30-60 s; the stories260K decoder tests calibrate outlier and static int8 in the fast suite
@pytest.mark.parametrize("method,options", [("smoothquant", {"alpha": "search"}), ("outlier", {})],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_sst2_subset_within_one_point(method, options, sst2_parents, dev_300, fp32_dev_300, tmp_path):
    # ort-dynamic, ort-static (minmax) and nncf-ptq are checked on the full set in test_quantization.py; the
    # histogram calibrators (entropy, percentile: a minute or more each here) in the slow suite.
    artifact = _quantized(sst2_parents, method, options, tmp_path)
    assert abs(_score(artifact, "accuracy", dev_300) - fp32_dev_300) <= 0.01 + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("method,options", INT8 + [("fp8", {}), ("nncf-fp8", {})],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_sst2_full_dev_within_one_point(method, options, sst2_parents, tmp_path):
    artifact = _quantized(sst2_parents, method, options, tmp_path)
    assert abs(_score(artifact, "accuracy", SST2_DEV) - 0.8865) <= 0.01 + 1e-9


@pytest.fixture(scope="module")
def default_parents(tmp_path_factory):
    source = models.resolve(None)
    out = tmp_path_factory.mktemp("default")
    return {fmt: exporters.export(source, "feature-extraction", fmt, out / fmt) for fmt in ("onnx", "openvino")}


@pytest.mark.slow
@pytest.mark.parametrize("method,options", INT8 + [("smoothquant", {"ffn_down_int8": True})],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_stsb_within_one_spearman_point(method, options, default_parents, tmp_path):
    assert _score(default_parents["onnx"], "stsb", STSB_TEST) == pytest.approx(82.03, abs=0.05)
    artifact = _quantized(default_parents, method, options, tmp_path)
    spearman = _score(artifact, "stsb", STSB_TEST)
    if options.get("ffn_down_int8"):
        # Every Linear layer int8, down-projections included: measured 79.82, a known loss kept visible here.
        assert 79.0 < spearman < 81.0, spearman
    else:
        assert abs(spearman - 82.03) <= 1.0
