"""Architectures are tried, not listed: tiny random models of families beyond those the other tests cover, each
exported to ONNX and OpenVINO and validated against PyTorch, or refused in one line naming the family and the step.

Random weights (2 layers, hidden 32): the numbers mean nothing, the agreement with PyTorch does.
"""
from __future__ import annotations

import pytest

from qdeploy import exporters, models
from qdeploy.errors import QdeployError

from .conftest import SST2_MODEL, STORIES

# Encoders use MiniLM's BERT tokenizer (vocabulary 30522, token types); decoders and seq2seq stories260K's (512).
ENCODER = {"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "max_position_embeddings": 256, "pad_token_id": 0, "num_labels": 2}
DECODER = {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 128,
           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False}
# pad 0 (<unk> doubles as pad), eos 2 (</s>), as in test_seq2seq.py
SEQ2SEQ = {"vocab_size": 512, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
           "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 128,
           "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1, "decoder_start_token_id": 0,
           "forced_eos_token_id": None}
T5 = {"vocab_size": 512, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4, "pad_token_id": 0,
      "eos_token_id": 2, "decoder_start_token_id": 0}

CLS, FEATURES, GEN, S2S = "text-classification", "feature-extraction", "text-generation", "text2text-generation"
# model_type -> (task, config arguments). Names as transformers 4.57 registers them; the first six had registry entries
# of their own before (their inputs now come from forward()), the rest were refused before anything was tried.
FAMILIES: dict[str, tuple[str, dict]] = {
    "electra": (CLS, {**ENCODER, "embedding_size": 32}),
    "albert": (CLS, {**ENCODER, "embedding_size": 32}),
    "distilbert": (CLS, {**ENCODER, "hidden_dim": 64}),  # no token types: BERT's tokenizer makes them, forward() not
    "roberta": (CLS, ENCODER),
    "mpnet": (FEATURES, ENCODER),
    "xlm-roberta": (FEATURES, ENCODER),
    "modernbert": (CLS, {**ENCODER, "global_attn_every_n_layers": 1, "local_attention": 16, "cls_token_id": 101,
                         "sep_token_id": 102}),
    "deberta-v2": (CLS, {**ENCODER, "type_vocab_size": 2}),
    "deberta": (FEATURES, {**ENCODER, "type_vocab_size": 2}),
    "camembert": (CLS, {**ENCODER, "pad_token_id": 1}),
    "roformer": (CLS, {**ENCODER, "embedding_size": 32}),
    "convbert": (CLS, {**ENCODER, "embedding_size": 32, "head_ratio": 2}),
    "mobilebert": (CLS, {**ENCODER, "embedding_size": 32, "intra_bottleneck_size": 32, "num_feedforward_networks": 1,
                         "true_hidden_size": 32}),
    "squeezebert": (CLS, {**ENCODER, "embedding_size": 32}),
    "ernie": (CLS, ENCODER),
    "data2vec-text": (FEATURES, {**ENCODER, "pad_token_id": 1}),
    "megatron-bert": (CLS, ENCODER),
    "phi3": (GEN, DECODER),
    "qwen3": (GEN, DECODER),
    "granite": (GEN, DECODER),
    "olmo": (GEN, DECODER),
    "olmo2": (GEN, DECODER),
    # head_dim is derived (a read-only property) in Falcon's config
    "falcon": (GEN, {**{k: v for k, v in DECODER.items() if k != "head_dim"}, "new_decoder_architecture": True,
                     "num_kv_heads": 2}),
    "stablelm": (GEN, DECODER),
    "gemma": (GEN, DECODER),
    "gemma2": (GEN, {**DECODER, "sliding_window": 16, "query_pre_attn_scalar": 8}),
    "gemma3_text": (GEN, {**DECODER, "sliding_window": 16, "query_pre_attn_scalar": 8}),
    "gptj": (GEN, {**DECODER, "n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4, "n_positions": 128}),
    "gpt_neo": (GEN, {**DECODER, "num_layers": 2, "num_heads": 4, "attention_types": [[["global", "local"], 1]],
                      "window_size": 16}),
    "codegen": (GEN, {**DECODER, "n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4, "n_positions": 128,
                      "n_ctx": 128}),
    "starcoder2": (GEN, {**DECODER, "sliding_window": None}),
    "cohere": (GEN, DECODER),
    "mixtral": (GEN, {**DECODER, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "smollm3": (GEN, DECODER),
    "helium": (GEN, DECODER),
    "glm": (GEN, DECODER),
    "pegasus": (S2S, SEQ2SEQ),
    "blenderbot": (S2S, SEQ2SEQ),
    "blenderbot-small": (S2S, SEQ2SEQ),
    "plbart": (S2S, SEQ2SEQ),
    "led": (S2S, {**SEQ2SEQ, "max_encoder_position_embeddings": 128, "max_decoder_position_embeddings": 128,
                  "attention_window": 8}),
    "mt5": (S2S, T5),
    "umt5": (S2S, T5),
}
# Families the libraries cannot export today: model_type -> (the step and the words its one-line error must name, why).
# Both formats fail the same way (OpenVINO IR is converted from the ONNX graph). Should one start to work, its test
# fails: move it to the verified list (tasks.VERIFIED_ARCHITECTURES).
EXPECTED_FAILURES = {
    "mixtral": ("exporting to onnx", "data-dependent expression",
                ("torch.export cannot trace the mixture-of-experts loop over the experts the router picked "
                 "(modeling_mixtral.py: for expert_idx in expert_hit)")),
    "led": ("exporting the encoder to onnx", "data-dependent expression",
            "LED pads its input to a multiple of the attention window: a shape torch.export cannot trace"),
}
# One of each kind, the quickest, and a failure (no graph gets written), in the default (fast) suite.
FAST = ("mobilebert", "qwen3", "blenderbot-small", "led")
AUTO = {CLS: "AutoModelForSequenceClassification", FEATURES: "AutoModel", GEN: "AutoModelForCausalLM",
        S2S: "AutoModelForSeq2SeqLM"}


def tiny(model_type: str, target):
    """A random model of the family in `target`, with a tokenizer its vocabulary covers."""
    import torch
    import transformers

    task, arguments = FAMILIES[model_type]
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **arguments)
    model = getattr(transformers, AUTO[task]).from_config(config).eval()
    # A config key a family spells differently would leave its default size (hidden 768 or more) and a slow test.
    assert model.num_parameters() < 3_000_000, (model_type, model.num_parameters())
    if task in (GEN, S2S):
        with torch.no_grad():
            # Random weights can favour eos (2) from the first step; a zero logit for it lets outputs run on.
            model.get_output_embeddings().weight[2] = 0
    model.save_pretrained(target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(SST2_MODEL if task in (CLS, FEATURES) else STORIES))
    if task == S2S:
        tokenizer.pad_token, tokenizer.padding_side = "<unk>", "right"
    tokenizer.save_pretrained(target)
    return models.resolve(str(target))


def _family(model_type: str):
    return pytest.param(model_type, id=model_type, marks=() if model_type in FAST else (pytest.mark.slow,))


@pytest.mark.parametrize("model_type", [_family(m) for m in FAMILIES])
def test_family_exports_and_validates_or_fails_in_one_line(model_type, tmp_path):
    import inspect

    import transformers

    task = FAMILIES[model_type][0]
    source = tiny(model_type, tmp_path / "model")
    for fmt in ("onnx", "openvino"):
        out = tmp_path / fmt
        if model_type in EXPECTED_FAILURES:
            doing, words, _ = EXPECTED_FAILURES[model_type]
            with pytest.raises(QdeployError) as caught:
                exporters.export(source, task, fmt, out)
            message = str(caught.value)
            assert "\n" not in message and f"architecture {model_type!r}" in message, message
            assert f"{doing}{'' if fmt == 'onnx' else ' (on the way to openvino)'} failed" in message, message
            assert words in message, message
            assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing staged left
            continue
        artifact = exporters.export(source, task, fmt, out)
        validation = artifact.manifest.validation
        assert validation["max_abs_diff"] < 1e-4
        if task in (GEN, S2S):
            assert validation["greedy_tokens_identical"]
        # What forward() takes decides: ModernBERT and DistilBERT have no token types (the tokenizer makes them).
        accepted = inspect.signature(getattr(transformers, AUTO[task]).from_pretrained(str(source.path)).forward)
        # beam_idx: the rows of a stateful cache to keep, which the exporter adds for OpenVINO GenAI
        inputs = [n for n in artifact.manifest.inputs if not n.startswith("past_key_values") and n != "beam_idx"]
        assert set(inputs) <= set(accepted.parameters)
        if task != S2S:  # the encoder of a seq2seq model takes ids and mask only
            optional = "position_ids" if task == GEN else "token_type_ids"
            assert (optional in inputs) == (optional in accepted.parameters), inputs


def test_verified_list_is_what_this_test_verifies():
    from qdeploy.tasks import ARCHITECTURES, VERIFIED_ARCHITECTURES

    for model_type, (task, _) in FAMILIES.items():
        assert (model_type in VERIFIED_ARCHITECTURES[task]) == (model_type not in EXPECTED_FAILURES), model_type
    # The rest are verified elsewhere: the real models and the slow sets of test_generation.py and test_seq2seq.py.
    elsewhere = {"bert", "llama", "mistral", "qwen2", "phi", "gpt2", "opt", "gpt_neox", "bloom", "bart", "mbart",
                 "marian", "m2m_100", "t5"}
    listed = {m for names in VERIFIED_ARCHITECTURES.values() for m in names}
    assert listed - set(FAMILIES) == elsewhere
    assert len(set(FAMILIES) - elsewhere - {"electra", "albert", "distilbert", "roberta", "mpnet", "xlm-roberta"}
               - set(EXPECTED_FAILURES)) >= 20
    assert set(ARCHITECTURES.names()) <= listed  # a special case the tests never exercise would be a guess


def test_inputs_follow_the_task_and_what_forward_takes():
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from qdeploy.tasks import architecture, model_inputs

    bert = AutoTokenizer.from_pretrained(str(SST2_MODEL))
    stories = AutoTokenizer.from_pretrained(str(STORIES))
    assert model_inputs(architecture("distilbert", FEATURES), bert) == ["input_ids", "attention_mask",
                                                                         "token_type_ids"]
    distilbert = DistilBertModel(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64))
    assert model_inputs(architecture("distilbert", FEATURES), bert, distilbert) == ["input_ids", "attention_mask"]
    assert model_inputs(architecture("qwen3", GEN), stories) == ["input_ids", "attention_mask", "position_ids"]
    assert model_inputs(architecture("qwen3", CLS), stories) == ["input_ids", "attention_mask"]
    assert model_inputs(architecture("bloom", GEN), stories) == ["input_ids", "attention_mask"]
    # Without a task (a run's benchmark inputs), the kind is what transformers' Auto classes have the family for.
    for model_type, tokenizer, expected in (
            ("bert", bert, ["input_ids", "attention_mask", "token_type_ids"]),
            ("llama", stories, ["input_ids", "attention_mask", "position_ids"]),
            ("gpt2", stories, ["input_ids", "attention_mask", "position_ids"]),
            ("bart", stories, ["input_ids", "attention_mask"])):
        assert model_inputs(architecture(model_type), tokenizer) == expected, model_type


def test_context_length_comes_from_whichever_key_the_config_has():
    from qdeploy.tasks import max_positions

    assert max_positions({"model_type": "llama", "max_position_embeddings": 2048}) == 2048
    assert max_positions({"model_type": "gpt2", "n_positions": 1024}) == 1024
    assert max_positions({"model_type": "codegen", "n_ctx": 2048}) == 2048
    assert max_positions({"model_type": "t5", "n_positions": 512}) is None  # relative positions: no limit
    assert max_positions({"model_type": "bloom"}) is None
