"""Causal LM -> ONNX with the KV cache as inputs and outputs, or OpenVINO IR (stateful by default), validated token by
token: the exported model must reproduce PyTorch's greedy tokens and, within tolerance, its logits at every step.

ONNX goes through `torch.onnx.export(dynamo=True)`: the TorchScript exporter fails on the cache code of current
transformers (`unordered_map::at`). OpenVINO IR is converted from that ONNX graph, then made stateful, so both formats
come from one traced graph.
"""
from __future__ import annotations

import contextlib
import gc
import io
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import Artifact, Manifest, copy_tokenizer, finalize, staging
from ..engine_files import write_genai_config, write_openvino_tokenizers
from ..layer_plan_graph import tag_openvino_modules
from ..errors import ExportValidationError, UnsupportedError
from ..machine import build_record, describe
from ..models import ModelSource
from ..runtimes import decoding
from ..tasks import architecture, for_generation, load_model, model_inputs, task
from ..textdata import builtin_path
from ..formats import runtime_config as runtime_config_of

ONNX_FILE = "model.onnx"
OPENVINO_FILE = "openvino_model.xml"
# Beyond this the protobuf limit (2 GB) is near: weights go to an external file next to the graph.
EXTERNAL_DATA_BYTES = 1_800_000_000
GREEDY_STEPS = 8
BEAM_IDX = "beam_idx"
# For ONNX Runtime the graph is written at opset 23, whose Attention (grouped-query, cache in and out),
# RotaryEmbedding and RMSNormalization the exporter emits for SDPA models and ONNX Runtime runs as single kernels:
# with its lm_head and table also int8, SmolLM2-135M's int8 decode went from 1.74x to 2.72x PyTorch fp32 (ORT 1.32,
# 2 cores, smollm2_decode.py). OpenVINO IR is converted from an opset-18 graph, as before.
ONNX_RUNTIME_OPSET = 23
BASE_OPSET = 18
# fp32 stateful OpenVINO: the cache must stay f32 too (the CPU plugin may otherwise compress it to u8 or f16).


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [name.replace("past_key_values", "present") for name in past]


def _wrap(model, input_names: list[str], layers: int):
    """Positional inputs (the architecture's, then the flattened cache) -> (logits, *flattened present cache)."""
    import torch
    from transformers import DynamicCache

    count = len(input_names)

    class WithCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(args[count + 2 * i], args[count + 2 * i + 1], i)
            out = self.model(**dict(zip(input_names, args[:count])), past_key_values=cache, use_cache=True)
            present = out.past_key_values
            flat = []
            for i in range(layers):
                layer = present.layers[i]
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    return WithCache().eval()


def prompts(tokenizer, input_names: list[str]) -> dict[str, np.ndarray]:
    """Two real held-out sentences of different lengths, left-padded: a batch that exercises the padding path."""
    lines = builtin_path("heldout.txt").read_text(encoding="utf-8").splitlines()
    enc = tokenizer([lines[0], lines[5].split(",")[0]], padding=True, truncation=True, max_length=24,
                    return_tensors="np")
    return {name: enc[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


def step_logits(decoder: decoding.Decoder, batch: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Last-position logits after the prompt and after each of `tokens` fed one at a time (teacher forcing)."""
    mask = batch["attention_mask"]
    decoder.reset(mask.shape[0])
    logits = [decoder.step(batch["input_ids"], mask)[:, -1]]
    for column in tokens.T[:-1]:
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
        logits.append(decoder.step(column[:, None], mask)[:, -1])
    return np.stack(logits, axis=1)


def compare(artifact: Artifact, runtime: str, batch, ref_tokens, ref_logits, atol: float, rtol: float = 1e-3,
            trace=None):
    """Greedy tokens must be identical; step logits within atol + rtol * max|logit| (logits are compared on the scale
    of the distribution they parameterize, so small logits do not get a tolerance of almost nothing).

    `trace(session, batch, tokens)` gives the step logits (default: a decoder-only model's `step_logits`)."""
    from .. import runtimes
    from . import step

    model_type = artifact.manifest.source.get("model_type", "?")
    with step(model_type, f"loading in {runtime}"):
        decoder = runtimes.load(artifact, runtime)
    with step(model_type, f"validating on {runtime}"):
        tokens = decoder.generate(batch["input_ids"], batch["attention_mask"], GREEDY_STEPS, eos_token_id=None)
        logits = (trace or step_logits)(decoder, batch, ref_tokens)
    diff = float(np.abs(logits - ref_logits).max()) if logits.shape == ref_logits.shape else float("inf")
    bound = atol + rtol * float(np.abs(ref_logits).max())
    if not np.array_equal(tokens, ref_tokens):
        raise ExportValidationError(
            f"architecture {model_type!r}: {artifact.format} export failed validation on {runtime}: greedy tokens "
            f"{tokens.tolist()} differ from PyTorch's {ref_tokens.tolist()} (logits differ by up to {diff:.3g})")
    if not diff <= bound:
        raise ExportValidationError(f"architecture {model_type!r}: {artifact.format} export failed validation on "
                                    f"{runtime}: step logits differ from PyTorch by up to {diff:.3g} "
                                    f"(tolerance {bound:.3g})")
    return {"runtime": runtime, "max_abs_diff": diff, "tolerance": bound, "greedy_tokens_identical": True,
            "greedy_steps": GREEDY_STEPS, "batch": list(batch["input_ids"].shape)}


@contextlib.contextmanager
def _grouped_query_sdpa(on: bool):
    """transformers repeats a grouped-query model's keys and values to every head before SDPA unless the call can
    take `enable_gqa` (it allows that only without a mask): traced that way, the graph holds 60 Expand and Reshape
    nodes and Attention reads 9 key heads for SmolLM2's 3. Opset 23's Attention takes the 3 as they are: the int4
    decode step went from 10.8 to 8.7 ms (ORT 1.32, 2 cores), the tokens and logits unchanged."""
    from transformers.integrations import sdpa_attention

    original = sdpa_attention.use_gqa_in_sdpa
    if on:
        sdpa_attention.use_gqa_in_sdpa = lambda attention_mask, key: True
    try:
        yield
    finally:
        sdpa_attention.use_gqa_in_sdpa = original


def _grouped(config) -> bool:
    """Fewer key/value heads than query heads (SmolLM2: 3 for 9). With as many, `enable_gqa` fails to export."""
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return bool(isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads < heads)


def _write_onnx(wrapped, example: tuple, names_in: list[str], names_out: list[str], past_in: list[str],
                target: Path, opset: int, large: bool, grouped: bool = False) -> None:
    import torch

    dynamic = torch.export.Dim.DYNAMIC
    shapes = [{0: dynamic, 1: dynamic} for _ in names_in[:len(names_in) - len(past_in)]]
    shapes += [{0: dynamic, 2: dynamic} for _ in past_in]
    # torch.export prints the partial graph of a failed trace to stderr: the one-line error says what failed.
    with (warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()),
          _grouped_query_sdpa(grouped and opset >= ONNX_RUNTIME_OPSET)):
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, example, str(target / ONNX_FILE), dynamo=True, input_names=names_in,
                          output_names=names_out, dynamic_shapes=(tuple(shapes),), opset_version=opset,
                          external_data=large, verbose=False)


def _onnx_to_openvino(path: Path):
    """What `ov.convert_model(path)` gives (the frontend's graph, then the offline transformations it applies), in
    less memory: for SmolLM2-135M's 0.54 GB of weights convert_model peaked at 5.5 GB; the frontend alone, the
    weights mapped from the ONNX side file, then the same transformations: 1 GB over what the process held."""
    from openvino._offline_transformations import apply_moc_transformations
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("onnx")
    model = frontend.convert(frontend.load(str(path)))
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    return model


def _make_stateful(model, past_in: list[str], present_out: list[str]) -> None:
    """Cache inputs/outputs become OpenVINO state. Each state starts as zeros [batch, heads, 0, dim], its batch
    taken from input_ids: without that initializer the state's batch would be 0 and reshapes in the graph fail.

    Each past is first gathered by a `beam_idx` input [batch] (the rows to keep, in order), as optimum-intel's
    stateful export does: OpenVINO GenAI's LLMPipeline feeds it on every call and refuses an IR without it."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam_idx = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name=BEAM_IDX)
    beam_idx.output(0).get_tensor().set_names({BEAM_IDX})
    for name in past_in:
        port = model.input(name)
        consumers = list(port.get_target_inputs())
        gathered = ops.gather(port, beam_idx, ops.constant(np.array(0, dtype=np.int64)))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    model.add_parameters([beam_idx])
    apply_make_stateful_transformation(model, dict(zip(past_in, present_out)))
    batch = ops.gather(ops.shape_of(model.input("input_ids"), output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            shape = op.get_output_partial_shape(0)
            dims = [batch if axis == 0 else ops.constant(np.array([0 if d.is_dynamic else d.get_length()], np.int64))
                    for axis, d in enumerate(shape)]
            op.set_arguments([ops.broadcast(ops.constant(np.array(0, dtype=np.float32)), ops.concat(dims, 0))])
    model.validate_nodes_and_infer_types()


def export(source: ModelSource, task_name: str, fmt_name: str, out: Path, *, atol: float | None = None,
           opset: int | None = None, trust_remote_code: bool = False, overwrite: bool = False, progress=None,
           stateful: bool = True) -> Artifact:
    import torch

    say = progress or (lambda message: None)
    if fmt_name not in ("onnx", "openvino"):
        raise UnsupportedError(f"generative models export to onnx or openvino, not {fmt_name}")
    arch = architecture(source.model_type, task_name)
    the_task = task(task_name)
    say(f"loading {source.spec}")
    model = load_model(source.path, task_name, trust_remote_code, pickle=source.pickle)
    from . import step, tokenizer_for

    tokenizer = for_generation(tokenizer_for(source.path))
    input_names = model_inputs(arch, tokenizer, model)
    pad = int(tokenizer.pad_token_id or 0)
    eos = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else None
    batch = prompts(tokenizer, input_names)
    reference = decoding.TorchDecoder(model, input_names=input_names, pad_token_id=pad, eos_token_id=eos)
    # Example: a real prefix in the cache (3 tokens) and 4 new tokens, batch 2, so no axis is traced as 0 or 1.
    ids = batch["input_ids"][:, -7:]
    # A family whose cache is not one key/value pair per layer (state-space, hybrid models) stops here.
    with step(source.model_type, "running in pytorch with a KV cache"):
        # References first: tracing for export can leave the module in a state whose eager outputs differ.
        ref_tokens = reference.generate(batch["input_ids"], batch["attention_mask"], GREEDY_STEPS, eos_token_id=None)
        ref_logits = step_logits(reference, batch, ref_tokens)
        with torch.inference_mode():
            prefix = model(input_ids=torch.from_numpy(ids[:, :3]), use_cache=True).past_key_values
        layers = len(prefix.layers)
        past = [t.clone() for layer in prefix.layers for t in (layer.keys, layer.values)]
    past_in, present_out = cache_names(layers)
    mask = np.ones_like(ids)
    feeds = {"input_ids": ids[:, 3:], "attention_mask": mask, "position_ids": decoding.positions(mask, 4)}
    example = (*[torch.from_numpy(feeds[name]) for name in input_names], *past)
    past_shape = [-1, *past[0].shape[1:]]
    past_shape[2] = 0
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    spec: dict[str, Any] = {"past_inputs": past_in, "present_outputs": present_out, "past_shape": past_shape,
                            "layers": layers, "pad_token_id": pad, "eos_token_id": eos, "stateful": False}
    # Opset 23 for OpenVINO too: its frontend turns the Attention op into ScaledDotProductAttention, the form its CPU
    # kernels and OpenVINO GenAI run fast (decomposed from opset 18, attention was a MatMul/Softmax chain).
    graph_opset = max(opset or arch.opset, ONNX_RUNTIME_OPSET if opset is None else BASE_OPSET)
    with staging(Path(out), overwrite=overwrite) as tmp:
        say(f"exporting to {fmt_name} with a KV cache ({layers} layers, opset {graph_opset})")
        graph_dir = tmp if fmt_name == "onnx" else Path(tempfile.mkdtemp(prefix="onnx-", dir=tmp))
        via = "" if fmt_name == "onnx" else " (on the way to openvino)"
        with step(source.model_type, f"exporting to onnx{via}"):
            # On the way to OpenVINO the weights go to a side file, which the ONNX frontend maps instead of copying.
            _write_onnx(_wrap(model, input_names, layers), example, [*input_names, *past_in],
                        ["logits", *present_out], past_in, graph_dir, graph_opset, large or fmt_name == "openvino",
                        # the frontend reads a grouped Attention's output as having the key heads' width
                        _grouped(model.config) and fmt_name == "onnx")
        # The references are taken: the PyTorch model is not needed again, and the conversion and the validating
        # session come next, each about the model's size.
        del model, reference, prefix, past, example
        gc.collect()
        runtime_config: dict[str, Any] = runtime_config_of("onnx")
        model_file = ONNX_FILE
        if fmt_name == "openvino":
            import openvino as ov

            with step(source.model_type, "converting to openvino"):
                ov_model = _onnx_to_openvino(graph_dir / ONNX_FILE)
                tag_openvino_modules(ov_model, graph_dir / ONNX_FILE)  # layer plans name modules on both formats
                if stateful:
                    _make_stateful(ov_model, past_in, present_out)
                # An engine that loads the folder as it is (OpenVINO GenAI) keeps an fp32 cache too: by default it
                # stores keys and values in u8 for an attention it runs as ScaledDotProductAttention.
                ov_model.set_rt_info("f32", ["runtime_options", "KV_CACHE_PRECISION"])
                ov.save_model(ov_model, str(tmp / OPENVINO_FILE), compress_to_fp16=False)
            del ov_model
            shutil.rmtree(graph_dir)
            spec["stateful"] = stateful
            # the cache stays f32 too (the CPU plugin may otherwise compress it to u8 or f16)
            runtime_config = runtime_config_of("openvino")
            runtime_config["openvino"]["KV_CACHE_PRECISION"] = "f32"
            model_file = OPENVINO_FILE
        runtime_config["decoder"] = spec
        copy_tokenizer(source.path, tmp)
        inputs = input_names + ([BEAM_IDX] if spec["stateful"] else past_in)
        # What the engines read beside the graph; an artifact they cannot load says why in its notes.
        if fmt_name == "onnx":
            why_not = write_genai_config(tmp, model_file, inputs, spec)
            engine = "onnxruntime-genai"
        else:
            why_not = write_openvino_tokenizers(tokenizer, tmp) if stateful else "the IR is stateless"
            engine = "openvino-genai"
        notes = [f"{engine} cannot load it: {why_not}"] if why_not else []
        manifest = Manifest(
            format=fmt_name, model_file=model_file, precision="fp32", task=task_name, source=source.describe(),
            # The graph's inputs: with an explicit cache, its empty past is part of every complete feed.
            runtime_config=runtime_config, inputs=inputs, outputs=list(the_task.outputs),
            libraries=describe()["libraries"], built_on=build_record(), notes=notes,
        )
        finalize(tmp, manifest)
        validator = "ort-cpu" if fmt_name == "onnx" else "openvino-cpu"
        say(f"validating {fmt_name} against PyTorch: greedy tokens and step logits")
        manifest.validation = compare(Artifact(tmp, manifest), validator, batch, ref_tokens, ref_logits,
                                      atol if atol is not None else arch.atol)
        finalize(tmp, manifest)
    return Artifact.load(out)
