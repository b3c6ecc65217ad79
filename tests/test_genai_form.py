"""The decoder graph rewritten into ONNX Runtime GenAI's form (GroupQueryAttention, SkipSimplifiedLayerNormalization):
the same names, the same greedy tokens and logits in qdeploy's own loop (separate past and present, left padding
included) and in ONNX Runtime GenAI with one shared cache buffer.

On stories260K, a real trained Llama. Its heads are 8 wide, and ONNX Runtime's GroupQueryAttention rotates only heads
of a multiple of 16: the rewrite must leave its attention alone. So the GroupQueryAttention path runs on the same
checkpoint with its heads regrouped (4 query heads of 16 and 2 key/value heads of 16 instead of 8 and 4 of 8: every
weight matrix keeps its shape and values, the function changes): what is compared is the graph before and after the
rewrite, never quality.

The weight-int4 graph is compared with float activations (every MatMulNBits at accuracy_level 0, before and after):
at accuracy_level 4 ONNX Runtime quantizes each activation block to int8 as it runs, which turns a 1e-6 relative
change of an input (any reordering of a float sum) into about 2 % of the largest logit on this model, so no rewrite
that is not bit-exact can be held to 1e-3 there. With float activations the rewritten graph agrees to about 1e-5.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qdeploy import exporters, models, quantization, runtimes
from qdeploy.artifact import Artifact
from qdeploy.exporters.causal_lm import step_logits
from qdeploy.quantization.backends import onnx_genai_form

from .conftest import SHARED, STORIES

TINYSTORIES = SHARED / "data" / "tinystories" / "valid-head.txt"
PROMPT, NEW, PAD_LEFT = 128, 64, 37
RTOL = 1e-3  # of the largest |logit|, as the exporter's validation


def _graph(path: Path):
    import onnx

    return onnx.load(str(path / "model.onnx"))


def _ops(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _copy(artifact_dir: Path, target: Path, float_activations: bool = False) -> Path:
    shutil.copytree(artifact_dir, target)
    if float_activations:
        import onnx

        model = _graph(target)
        for node in model.graph.node:
            for attr in node.attribute:
                if node.op_type == "MatMulNBits" and attr.name == "accuracy_level":
                    attr.i = 0
        onnx.save(model, str(target / "model.onnx"))
    return target


def _rewritten(before: Path, target: Path) -> tuple[Path, int]:
    """A copy of `before`, rewritten, its genai_config.json switched to one shared cache buffer."""
    shutil.copytree(before, target)
    count = onnx_genai_form.to_genai_form_file(target / "model.onnx")
    config = json.loads((target / "genai_config.json").read_text())
    config["search"]["past_present_share_buffer"] = onnx_genai_form.uses_group_query_attention(_graph(target))
    (target / "genai_config.json").write_text(json.dumps(config, indent=2))
    return target, count


@pytest.fixture(scope="module")
def batches():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(STORIES))
    lines = TINYSTORIES.read_text(encoding="utf-8").splitlines()
    ids = tokenizer(" ".join(lines[:20]))["input_ids"][:PROMPT]
    other = tokenizer(" ".join(lines[40:60]))["input_ids"][:PROMPT - PAD_LEFT]
    assert len(ids) == PROMPT and len(other) == PROMPT - PAD_LEFT
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    one = np.array([ids], dtype=np.int64)
    padded = np.array([ids, [pad] * PAD_LEFT + other], dtype=np.int64)
    mask = np.ones_like(padded)
    mask[1, :PAD_LEFT] = 0
    return {"batch 1": {"input_ids": one, "attention_mask": np.ones_like(one)},
            "left-padded batch 2": {"input_ids": padded, "attention_mask": mask}}


@pytest.fixture(scope="module")
def stories_fp32(tmp_path_factory):
    return exporters.export(models.resolve(str(STORIES)), "text-generation", "onnx",
                            tmp_path_factory.mktemp("stories") / "fp32").directory


@pytest.fixture(scope="module")
def regrouped(tmp_path_factory):
    """stories260K with heads of 16: fp32 and weight-int4 (float activations), before and after the rewrite."""
    out = tmp_path_factory.mktemp("regrouped")
    source = out / "model"
    shutil.copytree(STORIES, source)
    config = json.loads((source / "config.json").read_text())
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    (source / "config.json").write_text(json.dumps(config, indent=2))
    fp32 = exporters.export(models.resolve(str(source)), "text-generation", "onnx", out / "fp32")
    int4 = quantization.quantize(fp32, quantization.make_config("weight-int4", {"genai_form": False}, "onnx"),
                                 out / "weight-int4")
    pairs = {"shipped": quantization.quantize(fp32, quantization.make_config("weight-int8", {}, "onnx"),
                                              out / "weight-int8-default")}
    for name, directory, float_activations in (("fp32", fp32.directory, False),
                                               ("weight-int4", int4.directory, True),
                                               ("weight-int4 as shipped", int4.directory, False)):
        before = _copy(directory, out / f"{name}-before", float_activations)
        after, count = _rewritten(before, out / f"{name}-after")
        pairs[name] = (before, after, count)
    return pairs


def _loop(directory: Path, batch: dict, teacher: np.ndarray | None = None):
    decoder = runtimes.load(Artifact.load(directory), "ort-cpu", threads=2)
    tokens = decoder.generate(batch["input_ids"], batch["attention_mask"], NEW, eos_token_id=None)
    return tokens, step_logits(decoder, batch, tokens if teacher is None else teacher)


def _engine(directory: Path, batch: dict) -> np.ndarray:
    engine = runtimes.load(Artifact.load(directory), "ort-genai", threads=2)
    return engine.generate(batch["input_ids"], batch["attention_mask"], NEW, eos_token_id=None)


def _assert_same(before: Path, after: Path, batch: dict) -> None:
    tokens, logits = _loop(before, batch)
    new_tokens, new_logits = _loop(after, batch, teacher=tokens)  # logits on the same tokens, so they compare
    first = [int(np.argmax(a != b)) if (a != b).any() else None for a, b in zip(new_tokens, tokens)]
    assert np.array_equal(new_tokens, tokens), f"greedy tokens differ, per row first at step {first}"
    assert np.abs(new_logits - logits).max() <= RTOL * np.abs(logits).max()


def test_heads_of_8_keep_their_attention_and_fuse_only_the_norms(stories_fp32, batches, tmp_path):
    after, count = _rewritten(stories_fp32, tmp_path / "after")
    before_ops, after_ops = _ops(_graph(stories_fp32)), _ops(_graph(after))
    assert count == 10  # the residual Add + RMSNormalization pairs, 2 a layer; no attention
    assert after_ops["Attention"] == before_ops["Attention"] == 5 and "GroupQueryAttention" not in after_ops
    assert after_ops["SkipSimplifiedLayerNormalization"] == 10
    assert not onnx_genai_form.uses_group_query_attention(_graph(after))
    assert json.loads((after / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is False
    for batch in batches.values():
        _assert_same(stories_fp32, after, batch)


@pytest.mark.parametrize("name", ["fp32", "weight-int4", "weight-int4 as shipped"])
def test_the_rewritten_graph_is_grouped_query_attention_with_the_same_names(regrouped, name):
    before, after, count = regrouped[name]
    old, new = _graph(before), _graph(after)
    ops = _ops(new)
    assert count == 5 + 10 and ops["GroupQueryAttention"] == 5 and ops["SkipSimplifiedLayerNormalization"] == 10
    for gone in ("Attention", "RotaryEmbedding", "Cos", "Sin", "Slice", "GatherND"):
        assert gone not in ops, gone
    assert ops.get("Transpose", 0) == (1 if name == "fp32" else 0)  # fp32's tied lm_head; no head transposes
    past = {i.name for i in new.graph.input if i.name.startswith("past_key_values")}
    readers = {n.op_type for n in new.graph.node if past & set(n.input)}
    assert readers == {"GroupQueryAttention"}  # the cache is no longer concatenated outside the attention
    assert [i.name for i in new.graph.input] == [i.name for i in old.graph.input]
    assert [o.name for o in new.graph.output] == [o.name for o in old.graph.output]
    assert onnx_genai_form.uses_group_query_attention(new)
    gqa = next(n for n in new.graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: a.i for a in gqa.attribute if a.type == a.INT}
    assert attrs["num_heads"] == 4 and attrs["kv_num_heads"] == 2 and attrs["do_rotary"] == 1
    assert attrs["rotary_interleaved"] == 0
    cos = next(i for i in new.graph.initializer if i.name == gqa.input[7])
    assert list(cos.dims) == [512, 8]  # max_position_embeddings x head_size / 2
    if name != "fp32":
        assert gqa.input[1] == gqa.input[2] == ""  # query, key and value packed: the fused projection as it is


@pytest.mark.parametrize("name", ["fp32", "weight-int4"])
@pytest.mark.parametrize("which", ["batch 1", "left-padded batch 2"])
def test_own_loop_gives_the_same_tokens_and_logits(regrouped, batches, name, which):
    before, after, _ = regrouped[name]
    _assert_same(before, after, batches[which])


@pytest.mark.parametrize("name", ["fp32", "weight-int4"])
def test_genai_with_a_shared_buffer_gives_the_same_tokens(regrouped, batches, name):
    before, after, _ = regrouped[name]
    assert json.loads((after / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is True
    tokens = _engine(before, batches["batch 1"])
    assert tokens.shape == (1, NEW)
    assert np.array_equal(_engine(after, batches["batch 1"]), tokens)


def test_the_shipped_int4_graph_runs_alike_in_the_engine_and_in_the_own_loop(regrouped, batches):
    """At accuracy_level 4 the rewritten graph is not compared to the old one (see the module's note), but one
    graph must decode the same in both ways of carrying the cache: one shared buffer, and past and present apart."""
    _, after, _ = regrouped["weight-int4 as shipped"]
    own, _ = _loop(after, batches["batch 1"])
    assert np.array_equal(_engine(after, batches["batch 1"]), own)


def test_weight_only_quantization_writes_the_engine_form_by_default(regrouped):
    """What `qdeploy quantize --method weight-int8` ships: GroupQueryAttention in the graph, the shared buffer on."""
    artifact = regrouped["shipped"]
    ops = _ops(_graph(artifact.directory))
    assert ops["GroupQueryAttention"] == 5 and "Attention" not in ops
    assert json.loads((artifact.directory / "genai_config.json").read_text())["search"]["past_present_share_buffer"]
