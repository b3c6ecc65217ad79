"""Language-model artifacts in the engines people deploy them with: ONNX Runtime GenAI loads an ONNX decoder
(fp32 and weight-only int8) by its genai_config.json, OpenVINO GenAI's LLMPipeline loads a stateful IR (fp32 and
NNCF int8) with its tokenizer IRs; each generates PyTorch's greedy tokens. The engines are called through their own
APIs first (what a user types), then through qdeploy's runtimes `ort-genai` and `openvino-genai`.

stories260K is a real trained model; its greedy continuation of a real prompt is what is compared.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from qdeploy import baseline, exporters, models, quantization, runtimes
from qdeploy.artifact import DECODER, ENCODER
from qdeploy.benchmarking.generation import GenerationScenario, measure_generation
from qdeploy.errors import UnsupportedError
from qdeploy.tasks import for_generation

from .conftest import STORIES

NEW_TOKENS = 24
PROMPTS = ["Once upon a time", "The little dog ran to the park and"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """stories260K exported to ONNX and OpenVINO, each with one 8-bit weight method, and PyTorch's greedy tokens."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("engines")
    source = models.resolve(str(STORIES))
    onnx = exporters.export(source, "text-generation", "onnx", out / "onnx")
    openvino = exporters.export(source, "text-generation", "openvino", out / "openvino")
    artifacts = {
        "onnx": onnx, "openvino": openvino,
        "onnx-weight-int8": quantization.quantize(onnx, quantization.make_config("weight-int8", {}, "onnx"),
                                                  out / "onnx-w8"),
        "openvino-nncf-weight-int8": quantization.quantize(
            openvino, quantization.make_config("nncf-weight-int8", {}, "openvino"), out / "openvino-w8"),
    }
    tokenizer = for_generation(AutoTokenizer.from_pretrained(str(STORIES)))
    batch = tokenizer(PROMPTS, return_tensors="np", padding=True)
    fp32 = baseline.baseline_artifact(source, "text-generation", ["input_ids", "attention_mask", "position_ids"],
                                      pad_token_id=tokenizer.pad_token_id)
    torch_tokens = runtimes.load(fp32, "torch").generate(batch["input_ids"], batch["attention_mask"], NEW_TOKENS,
                                                         eos_token_id=None)
    return {"artifacts": artifacts, "batch": batch, "torch": torch_tokens}


@pytest.mark.parametrize("name", ["onnx", "onnx-weight-int8"])
def test_onnxruntime_genai_loads_the_onnx_artifact_and_generates_pytorchs_tokens(built, name):
    import onnxruntime_genai as og

    artifact = built["artifacts"][name]
    model = og.Model(str(artifact.directory))  # what a user types: the artifact's folder, nothing else
    ids = built["batch"]["input_ids"][1:]  # the second prompt is the longest: no padding
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + NEW_TOKENS, min_length=ids.shape[1] + NEW_TOKENS,
                              do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids.astype(np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    assert tokens == built["torch"][1].tolist()
    # and through qdeploy's runtime, a left-padded batch of two
    batch = built["batch"]
    session = runtimes.load(artifact, "ort-genai", threads=2)
    np.testing.assert_array_equal(
        session.generate(batch["input_ids"], batch["attention_mask"], NEW_TOKENS, eos_token_id=None), built["torch"])


@pytest.mark.parametrize("name", ["openvino", "openvino-nncf-weight-int8"])
def test_openvino_genai_loads_the_openvino_artifact_and_generates_pytorchs_tokens(built, name):
    import openvino as ov
    import openvino_genai as og

    artifact = built["artifacts"][name]
    pipeline = og.LLMPipeline(str(artifact.directory), "CPU")  # the folder as written: IR, tokenizer IRs, configs
    config = og.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = NEW_TOKENS
    config.ignore_eos = True
    ids = built["batch"]["input_ids"][1:]
    result = pipeline.generate(og.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config)
    assert list(result.tokens[0]) == built["torch"][1].tolist()
    # its own tokenizer IR, as a user would call it with text, encodes as the Hugging Face tokenizer does
    assert "Once upon a time" in pipeline.get_tokenizer().decode(
        np.asarray(pipeline.get_tokenizer().encode("Once upon a time").input_ids.data)[0].tolist())
    batch = built["batch"]
    session = runtimes.load(artifact, "openvino-genai", threads=2)
    np.testing.assert_array_equal(
        session.generate(batch["input_ids"], batch["attention_mask"], NEW_TOKENS, eos_token_id=None), built["torch"])


def test_genai_config_names_what_the_graph_has(built):
    """Every name the engine will look for is an input or output of the written graph, for each layer."""
    import onnx

    for name in ("onnx", "onnx-weight-int8"):
        artifact = built["artifacts"][name]
        config = json.loads((artifact.directory / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        assert decoder["filename"] == artifact.manifest.model_file
        graph = onnx.load(str(artifact.model_path), load_external_data=False).graph
        inputs, outputs = {i.name for i in graph.input}, {o.name for o in graph.output}
        layers = decoder["num_hidden_layers"]
        assert layers == 5 and decoder["num_key_value_heads"] == 4 and decoder["head_size"] == 8
        for key, pattern in decoder["inputs"].items():
            names = [pattern % i for i in range(layers)] if "%d" in pattern else [pattern]
            assert set(names) <= inputs, key
        for key, pattern in decoder["outputs"].items():
            names = [pattern % i for i in range(layers)] if "%d" in pattern else [pattern]
            assert set(names) <= outputs, key


def test_the_engines_time_generation_and_say_what_they_cannot_give(built):
    rng = np.random.default_rng(0)
    prompts = {1: [{"input_ids": rng.integers(3, 500, (1, 32)), "attention_mask": np.ones((1, 32), np.int64)}
                   for _ in range(2)]}
    scenario = GenerationScenario(prompt_len=32, new_tokens=8, batch_sizes=(1,), warmup=1, min_reps=2,
                                  min_time_s=0.0)
    for name, runtime in (("onnx-weight-int8", "ort-genai"), ("openvino-nncf-weight-int8", "openvino-genai")):
        session = runtimes.load(built["artifacts"][name], runtime, threads=2)
        record = measure_generation(session, prompts, scenario)[0]
        assert record["decode_tokens_per_s"] > 0 and record["ttft_ms"] > 0 and record["repetitions"] >= 2
    # ORT GenAI gives the graph's logits of every position fed; OpenVINO GenAI only tokens, and says so
    feed = prompts[1][0]
    logits = runtimes.load(built["artifacts"]["onnx"], "ort-genai", 2).run(feed)["logits"]
    reference = runtimes.load(built["artifacts"]["onnx"], "ort-cpu", 2).run(feed)["logits"]
    assert logits.shape == reference.shape == (1, 32, 512)
    np.testing.assert_allclose(logits, reference, atol=1e-4)
    with pytest.raises(UnsupportedError, match="not logits"):
        runtimes.load(built["artifacts"]["openvino"], "openvino-genai", 2).run(feed)
    # the engines run language models only: an encoder run never pairs with them
    assert runtimes.runs("ort-genai", "onnx", DECODER) and not runtimes.runs("ort-genai", "onnx", ENCODER)
    assert not runtimes.runs("openvino-genai", "openvino", ENCODER)


@pytest.mark.parametrize("name", ["onnx", "onnx-weight-int8", "openvino", "openvino-nncf-weight-int8"])
def test_optimums_causal_lm_classes_load_the_artifact_and_generate_pytorchs_tokens(built, name):
    """What a transformers user reaches for: optimum's ORTModelForCausalLM (ONNX) or OVModelForCausalLM (a stateful
    IR with beam_idx), given the artifact's folder."""
    import torch

    if name.startswith("onnx"):
        from optimum.onnxruntime import ORTModelForCausalLM as Model
    else:
        from optimum.intel import OVModelForCausalLM as Model
    model = Model.from_pretrained(str(built["artifacts"][name].directory))
    ids = torch.from_numpy(built["batch"]["input_ids"][1:])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                         min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=2)
    assert out[0, ids.shape[1]:].tolist() == built["torch"][1].tolist()


def test_sibling_projections_run_as_one_kernel(built):
    """weight-int8 on ONNX: each layer's query/key/value and gate/up MatMulNBits become one kernel and a Split (as
    ORT GenAI's builder lays them out); the greedy tokens above are those of this graph."""
    import onnx

    graph = onnx.load(str(built["artifacts"]["onnx-weight-int8"].model_path)).graph
    kernels = [node for node in graph.node if node.op_type == "MatMulNBits"]
    fused = [node for node in kernels if node.doc_string.startswith("fused:")]
    members = [len(node.doc_string.split(",")) for node in fused]
    assert sorted(members) == [2] * 5 + [3] * 5  # 5 layers: gate/up and query/key/value
    consumers = {name for node in graph.node if node.op_type == "Split" for name in node.input}
    assert all(node.output[0] in consumers for node in fused)
