"""Seq2seq (encoder-decoder) models: export to an encoder and a decoder graph with a KV cache, greedy generation on
every runtime, and BLEU / ROUGE through the pipeline.

Tiny random BART, T5 and Marian models are built from configs here, with stories260K's tokenizer (vocabulary 512):
their numbers mean nothing, their agreement with PyTorch does.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from qdeploy import baseline, evaluation, exporters, models, pipeline, runtimes
from qdeploy.errors import ConfigError, InputError, UnsupportedError
from qdeploy.evaluation.seq2seq_metrics import read_parallel, summary_scores, translation_scores
from qdeploy.plan import MethodSpec, Plan

from .conftest import SHARED, SST2_MODEL, STORIES

WMT_EN = SHARED / "data" / "wmt" / "newstest2016.en-ro.en"
WMT_RO = SHARED / "data" / "wmt" / "newstest2016.en-ro.ro"
CNNDM = SHARED / "data" / "cnndm" / "gpt4-summaries.jsonl"
TASK = "text2text-generation"


def _config(kind: str):
    import transformers as tf

    # pad 0 (<unk> doubles as pad), eos 2 (</s>); BART and mBART start decoding with eos, T5 and Marian with pad.
    ids = {"vocab_size": 512, "pad_token_id": 0, "eos_token_id": 2}
    layers = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
              "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
              "max_position_embeddings": 128, "forced_eos_token_id": None, "bos_token_id": 1}
    configs = {
        "bart": lambda: tf.BartConfig(decoder_start_token_id=2, **layers, **ids),
        "marian": lambda: tf.MarianConfig(decoder_start_token_id=0, **layers, **ids),
        "mbart": lambda: tf.MBartConfig(decoder_start_token_id=2, **layers, **ids),
        "m2m_100": lambda: tf.M2M100Config(decoder_start_token_id=2, **layers, **ids),
        "t5": lambda: tf.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0,
                                  **ids),
    }
    return configs[kind]()


def tiny_model(kind: str, target):
    """A random 2-layer model of the architecture in `target`, with a tokenizer that pads with <unk> on the right."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(_config(kind)).eval()
    with torch.no_grad():
        # Random weights favour eos (2) from the first step; a zero logit for it lets outputs run on.
        model.get_output_embeddings().weight[2] = 0
    model.save_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(str(STORIES))
    tokenizer.pad_token = "<unk>"
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(target)
    return models.resolve(str(target))


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    out = tmp_path_factory.mktemp("bart")
    source = tiny_model("bart", out / "model")
    onnx = exporters.export(source, TASK, "onnx", out / "onnx")
    fp32 = baseline.baseline_artifact(source, TASK, ["input_ids", "attention_mask"])
    return {"source": source, "onnx": onnx, "torch": runtimes.load(fp32, "torch"),
            "ort-cpu": runtimes.load(onnx, "ort-cpu")}


@pytest.fixture(scope="module")
def tokenizer(bart):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bart["source"].path))


def _sentences(tokenizer, count=3):
    lines = WMT_EN.read_text(encoding="utf-8").splitlines()[:count]
    return tokenizer(lines, padding=True, truncation=True, max_length=48, return_tensors="np")


def test_export_writes_two_graphs_and_passes_token_validation(bart):
    onnx = bart["onnx"]
    spec = onnx.manifest.runtime_config["seq2seq"]
    assert onnx.manifest.model_file == "decoder_model.onnx" and spec["encoder_file"] == "encoder_model.onnx"
    assert {"decoder_model.onnx", "encoder_model.onnx"} <= set(onnx.manifest.files)  # both hashed
    assert spec["past_inputs"][:2] == ["past_key_values.0.decoder.key", "past_key_values.0.decoder.value"]
    assert spec["decoder_start_token_id"] == 2 and spec["layers"] == 2
    assert onnx.manifest.validation["greedy_tokens_identical"] is True
    assert onnx.manifest.validation["max_abs_diff"] < 1e-4
    from qdeploy.artifact import Artifact

    Artifact.load(onnx.directory, verify=True)


def test_torch_session_generates_what_transformers_generate_does(bart, tokenizer):
    """The reference loop the exports are validated against is transformers' own greedy search."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    batch = _sentences(tokenizer)
    ours = bart["torch"].generate(batch["input_ids"], batch["attention_mask"], 10, eos_token_id=511)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(bart["source"].path)).eval()
    config = GenerationConfig(max_new_tokens=10, do_sample=False, num_beams=1, decoder_start_token_id=2,
                              pad_token_id=0, eos_token_id=511, forced_eos_token_id=None, forced_bos_token_id=None)
    theirs = model.generate(input_ids=torch.from_numpy(batch["input_ids"]),
                            attention_mask=torch.from_numpy(batch["attention_mask"]), generation_config=config)
    np.testing.assert_array_equal(ours, theirs[:, 1:].numpy())  # transformers keeps the start token in front


def test_greedy_tokens_identical_on_ort_and_batching_does_not_change_them(bart, tokenizer):
    batch = _sentences(tokenizer)
    tokens = {rt: bart[rt].generate(batch["input_ids"], batch["attention_mask"], 12, eos_token_id=None)
              for rt in ("torch", "ort-cpu")}
    np.testing.assert_array_equal(tokens["ort-cpu"], tokens["torch"])
    for row in range(3):
        width = int(batch["attention_mask"][row].sum())
        alone = bart["ort-cpu"].generate(batch["input_ids"][row:row + 1, :width], None, 12, eos_token_id=None)
        np.testing.assert_array_equal(alone[0], tokens["torch"][row])
    assert bart["ort-cpu"].run(dict(batch))["logits"].shape == (3, 1, 512)


def test_predictor_translates_what_the_session_generates(bart, tokenizer):
    import qdeploy

    predictor = qdeploy.load(bart["onnx"].directory)
    line = WMT_EN.read_text(encoding="utf-8").splitlines()[0]
    batch = tokenizer([line], truncation=True, max_length=512, return_tensors="np")
    tokens = bart["torch"].generate(batch["input_ids"], batch["attention_mask"], 10)[0]
    eos = bart["torch"].eos_token_id
    expected = tokenizer.decode(tokens[:list(tokens).index(eos)] if eos in tokens else tokens, skip_special_tokens=True)
    assert predictor.generate(line, max_new_tokens=10) == expected


def test_sampling_is_seeded(bart, tokenizer):
    batch = _sentences(tokenizer, 1)
    session = bart["ort-cpu"]
    first, again, other = (session.generate(batch["input_ids"], None, 12, do_sample=True, seed=s, eos_token_id=None)
                           for s in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    with pytest.raises(ConfigError, match="temperature"):
        session.generate(batch["input_ids"], None, 4, do_sample=True, temperature=0)


@pytest.mark.slow  # 70 s: a random model generates to the length limit for every sentence and article
def test_bleu_and_rouge_are_equal_on_torch_and_ort(bart, tokenizer):
    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"], batch_size=4, max_positions=128)
    bleu = {rt: translation_scores(bart[rt], ctx, f"{WMT_EN},{WMT_RO}:6") for rt in ("torch", "ort-cpu")}
    assert len(bleu["torch"]["hypotheses"]) == 6 and bleu["torch"]["chrf"] >= 0
    assert bleu["ort-cpu"] == bleu["torch"]  # identical tokens, identical text, identical scores
    rouge = {rt: summary_scores(bart[rt], ctx, f"{CNNDM}:3") for rt in ("torch", "ort-cpu")}
    assert set(rouge["torch"]) >= {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert rouge["ort-cpu"] == rouge["torch"]
    score = evaluation.metric("bleu").evaluate(bart["torch"], ctx, f"{WMT_EN},{WMT_RO}:6")
    assert score.value == bleu["torch"]["bleu"] and score.items.shape == (6, 10)


def test_metric_specs_fail_clearly(tmp_path):
    assert len(read_parallel(f"{WMT_EN},{WMT_RO}:5")) == 5
    with pytest.raises(ConfigError, match="SRC,REF"):
        read_parallel(str(WMT_EN))
    short = tmp_path / "short.ro"
    short.write_text("o propozitie\n")
    with pytest.raises(InputError, match="has 1999 lines but .* has 1;"):
        read_parallel(f"{WMT_EN},{short}")
    with pytest.raises(InputError, match="does not exist"):
        read_parallel(f"{WMT_EN},{tmp_path / 'missing.ro'}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no article"}) + "\n")
    with pytest.raises(InputError, match="'article' and 'summary'"):
        evaluation.metric("rouge").read(str(bad))


def test_a_model_transformers_cannot_load_as_seq2seq_is_refused_in_one_line(tmp_path):
    """No list decides: transformers' AutoModelForSeq2SeqLM does (other families: tests/test_architectures.py)."""
    with pytest.raises(UnsupportedError) as caught:
        exporters.export(models.resolve(str(SST2_MODEL)), TASK, "onnx", tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("architecture 'bert' does not support task text2text-generation")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bart", "t5", "marian", "mbart", "m2m_100"])
def test_tiny_architectures_export_and_generate_like_pytorch_on_every_runtime(kind, tmp_path):
    source = tiny_model(kind, tmp_path / kind)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    batch = _sentences(tokenizer)
    fp32 = baseline.baseline_artifact(source, TASK, ["input_ids", "attention_mask"])
    expected = runtimes.load(fp32, "torch").generate(batch["input_ids"], batch["attention_mask"], 10,
                                                         eos_token_id=None)
    for fmt, runtime in (("onnx", "ort-cpu"), ("openvino", "openvino-cpu")):
        artifact = exporters.export(source, TASK, fmt, tmp_path / f"{kind}-{fmt}")
        # export validates greedy tokens (8 steps, a padded batch of 2) and step logits against PyTorch
        assert artifact.manifest.validation["greedy_tokens_identical"]
        tokens = runtimes.load(artifact, runtime).generate(batch["input_ids"], batch["attention_mask"], 10,
                                                           eos_token_id=None)
        np.testing.assert_array_equal(tokens, expected)


@pytest.mark.slow
def test_pipeline_runs_bleu_and_rouge_on_every_runtime(tmp_path):
    source = tiny_model("bart", tmp_path / "bart")
    plan = Plan(model=str(source.path), task=TASK, methods=(MethodSpec("ort-dynamic"),),
                runtimes=("torch", "ort-cpu", "openvino-cpu"), batch_sizes=(1,), seq_len=16, min_reps=3,
                min_time_s=0.05, warmup=1, eval={"bleu": f"{WMT_EN},{WMT_RO}:8", "rouge": f"{CNNDM}:3"})
    pipeline.run(plan, out=tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {(r["variant"], r["runtime"]): r for r in report["results"]}
    assert {("pytorch-fp32", "torch"), ("onnx-fp32", "ort-cpu"), ("openvino-fp32", "openvino-cpu")} <= set(rows)
    values = {key: {q["metric"]: q["value"] for q in row["qualities"]} for key, row in rows.items()}
    torch_values = values[("pytorch-fp32", "torch")]
    assert set(torch_values) == {"seq2seq-agreement", "bleu", "rouge"}
    for key in (("onnx-fp32", "ort-cpu"), ("openvino-fp32", "openvino-cpu")):
        assert values[key] == torch_values, key
    assert ("ort-dynamic", "ort-cpu") in rows, report["skipped"]
    for row in rows.values():  # encoder + first step, then the decode loop, against PyTorch fp32 in the same run
        assert row["generation"]["ttft_ms"] > 0 and row["generation"]["decode_speedup_vs_fp32"] is not None


def test_chrf_and_rouge_variants_share_one_generation(bart, tokenizer):
    from qdeploy import evaluation
    from qdeploy.evaluation import seq2seq_metrics

    ctx = evaluation.EvalContext(tokenizer, ["input_ids", "attention_mask"], max_positions=128)
    spec = f"{WMT_EN},{WMT_RO}:3"
    bleu = evaluation.metric("bleu").evaluate(bart["ort-cpu"], ctx, spec).value
    first = seq2seq_metrics._LAST["value"]
    chrf = evaluation.metric("chrf").evaluate(bart["ort-cpu"], ctx, spec).value
    assert seq2seq_metrics._LAST["value"] is first  # the translations were not generated again
    assert (bleu, chrf) == (first["bleu"], first["chrf"]) and 0 <= chrf <= 100
    evaluation.metric("chrf").evaluate(bart["torch"], ctx, spec)
    assert seq2seq_metrics._LAST["value"] is not first  # another session generates its own
    for name in ("rouge-1", "rouge-2", "rouge-l"):
        assert 0 <= evaluation.metric(name).evaluate(bart["torch"], ctx, f"{CNNDM}:2").value <= 100
    # per-segment statistics (summaries, sentences) that aggregate to exactly the value
    for name, path, count in (("bleu", spec, 3), ("chrf", spec, 3), ("rouge", f"{CNNDM}:2", 2),
                              ("seq2seq-agreement", None, 8)):
        metric = evaluation.metric(name)
        score = metric.evaluate(bart["torch"], ctx, path)
        assert len(score.items) == count and metric.aggregate(score.items) == score.value, name
