"""Causal LMs with a KV cache: export, token-by-token generation on every runtime, and language-model metrics.

The real model is stories260K (a trained 260K-parameter Llama); the tiny random models built here from configs cover
architectures only, never quality.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from qdeploy import baseline, evaluation, exporters, models, quantization, runtimes
from qdeploy.errors import ConfigError
from qdeploy.evaluation import stats
from qdeploy.evaluation.language import token_logprobs, windows
from qdeploy.tasks import for_generation

from .conftest import SHARED, STORIES

TINYSTORIES = SHARED / "data" / "tinystories" / "valid-head.txt"
PUBLISHED_PERPLEXITY = 3.17  # ../shared/README.md, documents scored separately up to 512 tokens


@pytest.fixture(scope="module")
def stories():
    return models.resolve(str(STORIES))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return for_generation(AutoTokenizer.from_pretrained(str(STORIES)))


@pytest.fixture(scope="module")
def decoders(stories, tokenizer, tmp_path_factory):
    """The same model on PyTorch eager, ONNX Runtime (cache as inputs/outputs) and OpenVINO (stateful)."""
    out = tmp_path_factory.mktemp("stories")
    onnx = exporters.export(stories, "text-generation", "onnx", out / "onnx")
    openvino = exporters.export(stories, "text-generation", "openvino", out / "openvino")
    fp32 = baseline.baseline_artifact(stories, "text-generation", ["input_ids", "attention_mask", "position_ids"],
                                      pad_token_id=tokenizer.pad_token_id)
    return {"torch": runtimes.load(fp32, "torch"), "ort-cpu": runtimes.load(onnx, "ort-cpu"),
            "openvino-cpu": runtimes.load(openvino, "openvino-cpu"), "artifacts": {"onnx": onnx, "openvino": openvino}}


def test_exports_carry_the_cache_and_pass_token_validation(decoders):
    onnx, openvino = decoders["artifacts"]["onnx"], decoders["artifacts"]["openvino"]
    spec = onnx.manifest.runtime_config["decoder"]
    assert spec["past_inputs"][:2] == ["past_key_values.0.key", "past_key_values.0.value"] and spec["layers"] == 5
    assert openvino.manifest.runtime_config["decoder"]["stateful"] is True
    assert openvino.manifest.runtime_config["openvino"]["KV_CACHE_PRECISION"] == "f32"
    for artifact in (onnx, openvino):
        assert artifact.manifest.validation["greedy_tokens_identical"] is True
        assert artifact.manifest.validation["max_abs_diff"] < 1e-3


def test_the_onnx_export_uses_fused_grouped_query_attention(decoders):
    """Opset 23: one Attention, RotaryEmbedding and RMSNormalization kernel each, and the keys and values reach
    Attention with stories260K's 4 heads, not expanded to its 8 query heads (what made SmolLM2 decode faster)."""
    import onnx

    graph = onnx.load(str(decoders["artifacts"]["onnx"].model_path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Attention") == 5 and "RotaryEmbedding" in ops and "RMSNormalization" in ops
    # each Attention reads its layer's cache as stored (the present outputs), not a copy repeated to every head
    attention = [node for node in graph.node if node.op_type == "Attention"]
    assert [list(node.input[1:3]) for node in attention] == [[f"present.{i}.key", f"present.{i}.value"]
                                                             for i in range(5)]


def test_greedy_continuation_is_identical_on_every_runtime(decoders, tokenizer):
    prompt = tokenizer(["Once upon a time"], return_tensors="np")
    tokens = {rt: decoders[rt].generate(prompt["input_ids"], prompt["attention_mask"], max_new_tokens=48)
              for rt in ("torch", "ort-cpu", "openvino-cpu")}
    assert tokens["torch"].shape[1] > 20
    np.testing.assert_array_equal(tokens["ort-cpu"], tokens["torch"])
    np.testing.assert_array_equal(tokens["openvino-cpu"], tokens["torch"])
    text = tokenizer.decode(tokens["torch"][0], skip_special_tokens=True)
    assert len(text.split()) > 10 and "." in text  # a continuation in words, not noise


@pytest.mark.parametrize("runtime", ["ort-cpu", "openvino-cpu"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(decoders, tokenizer, runtime):
    prompts = ["Once upon a time", "One day, a little dog named Max went to the park"]
    batch = tokenizer(prompts, padding=True, return_tensors="np")
    together = decoders[runtime].generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=12,
                                          eos_token_id=None)
    for row, prompt in enumerate(prompts):
        alone = tokenizer([prompt], return_tensors="np")
        np.testing.assert_array_equal(
            decoders[runtime].generate(alone["input_ids"], alone["attention_mask"], 12, eos_token_id=None)[0],
            together[row])


def test_sampling_is_seeded(decoders, tokenizer):
    prompt = tokenizer(["Once upon a time"], return_tensors="np")["input_ids"]
    decoder = decoders["ort-cpu"]
    first = decoder.generate(prompt, max_new_tokens=16, do_sample=True, seed=3, temperature=1.0, top_k=20)
    again = decoder.generate(prompt, max_new_tokens=16, do_sample=True, seed=3, temperature=1.0, top_k=20)
    other = decoder.generate(prompt, max_new_tokens=16, do_sample=True, seed=4, temperature=1.0, top_k=20)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    with pytest.raises(ConfigError, match="temperature"):
        decoder.generate(prompt, max_new_tokens=4, do_sample=True, temperature=0)


def test_perplexity_matches_the_published_figure_on_every_runtime(decoders, tokenizer):
    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"], max_positions=512)
    values = {rt: evaluation.metric("perplexity").evaluate(decoders[rt], ctx, TINYSTORIES).value
              for rt in ("torch", "ort-cpu", "openvino-cpu")}
    for runtime, value in values.items():
        # The published 3.17 truncates documents at 512 tokens; the sliding window also scores their remainder.
        assert abs(value - PUBLISHED_PERPLEXITY) < 0.03, (runtime, value)
        assert abs(value - values["torch"]) < 1e-3, (runtime, value)


def test_scores_do_not_depend_on_batching(decoders, tokenizer):
    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"], batch_size=8)
    texts = TINYSTORIES.read_text().split("\n")[:6]
    sequences = [tokenizer(t)["input_ids"][:80] for t in texts if t.strip()]
    batched = token_logprobs(decoders["ort-cpu"], sequences, ctx)
    alone = [token_logprobs(decoders["ort-cpu"], [s], ctx)[0] for s in sequences]
    for a, b in zip(batched, alone):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_sliding_windows_score_every_token_once():
    tokens = list(range(1000))
    spans = windows(tokens, window=256, stride=128)
    assert sum(count for _, count in spans) == len(tokens) - 1
    assert all(len(span) <= 256 for span, _ in spans)
    assert windows(tokens[:100], 256, 128) == [(tokens[:100], 99)]


def test_lastword_and_choice_metrics(decoders, tokenizer, tmp_path):
    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"], max_positions=512)
    lines = [json.dumps({"text": t}) for t in (
        "Once upon a time, there was a little girl named Lily. She loved to play with her toys and her mom Lily",
        "Tom and Sue went to the park. They played on the swings and the slide. Tom said to Sue",
    )]
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text("\n".join(lines) + "\n")
    value = evaluation.metric("lastword").evaluate(decoders["torch"], ctx, lambada).value
    assert value in (0.0, 0.5, 1.0)
    items = tmp_path / "choice.jsonl"
    items.write_text("\n".join(json.dumps(r) for r in (
        {"context": "Once upon a time, there was a little", "endings": ["girl named Lily.", "purple of the the"],
         "label": 0},
        {"context": "She was very happy and she", "endings": ["banana window the.", "smiled at her mom."], "label": 1},
    )) + "\n")
    for name in ("choice", "choice-norm"):
        scores = {rt: evaluation.metric(name).evaluate(decoders[rt], ctx, items).value for rt in ("torch", "ort-cpu")}
        assert scores["torch"] == scores["ort-cpu"] == 1.0  # a trained model prefers the real continuation
    items.write_text(json.dumps({"context": "x", "endings": ["a"], "label": 3}) + "\n")
    with pytest.raises(Exception, match="label 3 does not index its 1 endings"):
        evaluation.metric("choice").read(items)


def test_language_metrics_carry_items_that_pair_with_fp32(decoders, tokenizer, tmp_path):
    """Every language metric's per-item statistics aggregate to its value and pair item by item with the baseline's;
    ONNX Runtime against PyTorch differs by float rounding only, so each comparison qualifies where it has the items
    to show it."""
    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"], max_positions=512)
    choice = tmp_path / "choice.jsonl"
    choice.write_text(json.dumps({"context": "Once upon a time, there was a little",
                                  "endings": ["girl named Lily.", "purple of the the"], "label": 0}) + "\n")
    paths = {"perplexity": TINYSTORIES, "lastword": TINYSTORIES, "choice": choice}
    shapes = {"perplexity": (11, 2), "choice": (1, 1), "token-agreement": (16, 2), "kl": (16, 2)}
    for name in ("perplexity", "lastword", "choice", "token-agreement", "kl"):
        metric = evaluation.metric(name)
        base = metric.evaluate(decoders["torch"], ctx, paths.get(name))
        if base.raw is not None:
            ctx.reference[name] = base.raw
        score = metric.evaluate(decoders["ort-cpu"], ctx, paths.get(name))
        for s in (base, score):
            assert float(metric.aggregate(s.items)) == pytest.approx(s.value, rel=1e-12, abs=1e-15), name
            low, high = stats.interval(metric, s.items)
            assert low - 1e-9 <= s.value <= high + 1e-9, (name, low, s.value, high)
        assert score.items.shape == base.items.shape == shapes.get(name, base.items.shape), name
        pair = stats.paired(metric, score.items, base.items)
        verdict = stats.judge(metric, score.value, base.value, pair)
        if metric.binary and pair.n < 100:
            # identical answers; but a handful of items cannot show equivalence within a point, and the
            # equivalence test says so rather than calling it equivalent
            assert pair.delta == 0 and verdict.phrase.startswith("not enough data to tell"), (name, verdict)
        else:
            assert verdict.qualifies, (name, pair, verdict)


def test_weight_only_int8_keeps_perplexity_within_two_percent(decoders, tokenizer, tmp_path):
    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"], max_positions=512)
    perplexity = evaluation.metric("perplexity")
    fp32 = perplexity.evaluate(decoders["openvino-cpu"], ctx, TINYSTORIES)
    int8 = quantization.quantize(decoders["artifacts"]["openvino"], quantization.make_config("nncf-weight-int8"),
                                 tmp_path / "int8")
    assert int8.manifest.runtime_config["decoder"]["stateful"] is True
    score = perplexity.evaluate(runtimes.load(int8, "openvino-cpu"), ctx, TINYSTORIES)
    assert abs(score.value - fp32.value) / fp32.value < 0.02, (fp32.value, score.value)
    # judged as the report does: document by document against fp32, on the paired interval (2 % relative)
    verdict = stats.judge(perplexity, score.value, fp32.value, stats.paired(perplexity, score.items, fp32.items))
    assert verdict.qualifies, verdict


def _tiny(kind: str):
    """A random model of the architecture, 2 layers, with stories260K's tokenizer (vocabulary 512)."""
    import transformers as tf

    common = {"vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    configs = {
        "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common),
        "opt": lambda: tf.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                    max_position_embeddings=128, word_embed_proj_dim=32, **common),
        "bloom": lambda: tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common),
        "llama": lambda: tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                        **common),
        "mistral": lambda: tf.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=128, **common),
        "qwen2": lambda: tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                        **common),
        "phi": lambda: tf.PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    max_position_embeddings=128, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=128, **common),
    }
    return configs[kind]()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "opt", "bloom", "llama", "mistral", "qwen2", "phi", "gpt_neox"])
def test_tiny_architectures_export_with_cache_and_generate_like_pytorch(kind, tmp_path):
    """Architecture coverage on random weights: the numbers mean nothing, the agreement with PyTorch does."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model_dir = tmp_path / kind
    AutoModelForCausalLM.from_config(_tiny(kind)).eval().save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(STORIES / name, model_dir / name)
    source = models.resolve(str(model_dir))
    for fmt, runtime in (("onnx", "ort-cpu"), ("openvino", "openvino-cpu")):
        artifact = exporters.export(source, "text-generation", fmt, tmp_path / f"{kind}-{fmt}")
        # export validates greedy tokens (8 steps, a left-padded batch of 2) and step logits against PyTorch
        assert artifact.manifest.validation["greedy_tokens_identical"]
        assert runtimes.load(artifact, runtime).generate(np.array([[1, 403, 407]]), max_new_tokens=5).shape == (1, 5)


def test_predictor_generates_text_from_the_artifact(decoders, tokenizer):
    import qdeploy

    predictor = qdeploy.load(decoders["artifacts"]["onnx"].directory)
    texts = predictor.generate(["Once upon a time", "The little cat"], max_new_tokens=20)
    prompt = tokenizer(["Once upon a time"], return_tensors="np")
    expected = decoders["torch"].generate(prompt["input_ids"], prompt["attention_mask"], 20)[0]
    assert texts[0] == tokenizer.decode(expected, skip_special_tokens=True)
    assert predictor("Once upon a time").startswith(texts[0])  # calling it generates (64 tokens by default)
    embedder = qdeploy.load(decoders["artifacts"]["openvino"].directory)
    assert embedder.generate("Once upon a time", max_new_tokens=20) == texts[0]


@pytest.mark.slow
def test_cli_stateless_openvino_export_and_generation_run(tmp_path):
    """`qdeploy export --stateless`, then a text-generation run with the methods table and the generation speeds."""
    import subprocess
    import sys

    def qdeploy(*args):
        return subprocess.run([sys.executable, "-m", "qdeploy", *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path)

    done = qdeploy("export", "--model", STORIES, "--task", "text-generation", "--format", "openvino", "--stateless",
                   "--out", tmp_path / "ov")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "ov" / "manifest.json").read_text())
    assert manifest["runtime_config"]["decoder"]["stateful"] is False
    done = qdeploy("run", "--model", STORIES, "--task", "text-generation", "--methods", "ort-dynamic,nncf-weight-int8",
                   "--runtimes", "torch,ort-cpu,openvino-cpu", "--batch-sizes", "1,4", "--min-time-s", "0.2",
                   "--min-reps", "3", "--new-tokens", "8", "--eval", f"perplexity={TINYSTORIES}",
                   "--eval", f"lastword={TINYSTORIES}", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {(r["variant"], r["runtime"], r["batch"]): r for r in report["results"]}
    assert {v for v, _, _ in rows} == {"pytorch-fp32", "onnx-fp32", "openvino-fp32", "ort-dynamic", "nncf-weight-int8"}
    for row in rows.values():
        quality = {q["metric"]: q for q in row["qualities"]}
        assert abs(quality["perplexity"]["value"] - PUBLISHED_PERPLEXITY) < 0.1
        assert quality["perplexity"]["gain"] == -quality["perplexity"]["delta"]
        assert row["generation"]["decode_tokens_per_s"] > 0 and row["generation"]["new_tokens"] == 8
        assert row["generation"]["decode_speedup_vs_fp32"] is not None
    assert rows[("nncf-weight-int8", "openvino-cpu", 1)]["qualities"][1]["value"] < 3.17 * 1.02
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## Generation" in markdown and "decode tok/s" in markdown


@pytest.mark.parametrize("method,options", [("ort-static", {"ffn_int8": True}), ("outlier", {"threshold": 6.0})])
def test_static_int8_calibrates_a_decoder_with_its_cache(decoders, tokenizer, tmp_path, method, options):
    """Calibration feeds a decoder whole (positions and an empty cache); the result still generates with its cache."""
    from qdeploy.calibration import CalibrationSource

    calibration = CalibrationSource(str(TINYSTORIES), samples=16, max_length=64)
    artifact = quantization.quantize(decoders["artifacts"]["onnx"], quantization.make_config(method, options),
                                     tmp_path / method, calibration)
    decoder = runtimes.load(artifact, "ort-cpu")
    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"], max_positions=512)
    value = evaluation.metric("perplexity").evaluate(decoder, ctx, TINYSTORIES).value
    assert PUBLISHED_PERPLEXITY < value < PUBLISHED_PERPLEXITY * 1.05, value  # int8 costs a little, not a lot
    assert decoder.generate(np.array([[1, 403, 407, 261, 378]]), max_new_tokens=8).shape == (1, 8)
