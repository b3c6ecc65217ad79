"""Encoder-decoder (seq2seq) model -> two graphs in one artifact: an encoder (input_ids, attention_mask ->
encoder_hidden_states) and a decoder with the self-attention KV cache as inputs and outputs. Validated token by token
like causal LMs: PyTorch's greedy tokens exactly, its step logits within tolerance.

The decoder recomputes the cross-attention keys/values from `encoder_hidden_states` at every step instead of carrying
them as a second cache: one decoder graph serves the first step and every later one (no "with/without past" pair),
and the cache inputs stay one kind. The price is two projections of the encoder states per layer per step, small next
to the output projection over the vocabulary for the short sources this tool evaluates.

Both graphs go through `torch.onnx.export(dynamo=True)` (the TorchScript exporter fails on the cache code). OpenVINO
IRs are converted from those ONNX graphs and are stateless: the cache is fed explicitly, as with ONNX Runtime.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import Artifact, Manifest, copy_tokenizer, finalize, staging
from ..errors import UnsupportedError
from ..machine import build_record, describe
from ..models import ModelSource
from ..runtimes import seq2seq_decoding as s2s
from ..tasks import architecture, load_model, task
from ..formats import runtime_config as runtime_config_of
from . import causal_lm

ENCODER = "encoder_model"
DECODER = "decoder_model"
GREEDY_STEPS = causal_lm.GREEDY_STEPS
EXTERNAL_DATA_BYTES = 1_800_000_000
# fp32 OpenVINO: otherwise the CPU plugin runs bf16 on CPUs that have it (differences ~5e-2 instead of ~5e-5).
SOURCES = ("The quick brown fox jumps over the lazy dog near the river bank.",
           "Parliament approved the budget on Tuesday.")


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.decoder.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [name.replace("past_key_values", "present") for name in past]


def _wrap_encoder(model):
    import torch

    encoder = model.get_encoder()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, *args):  # positional only: what the dynamic-shapes spec of the exporter expects
            input_ids, attention_mask = args
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Encoder().eval()


def _wrap_decoder(model, layers: int):
    """(decoder_input_ids, encoder_attention_mask, encoder_hidden_states, *flat self cache) -> (logits, *present)."""
    import torch
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            decoder_input_ids, encoder_attention_mask, encoder_hidden_states, *past = args
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            # An empty cross-attention cache: every step projects the encoder states again (see the module doc).
            out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
                             attention_mask=encoder_attention_mask, decoder_input_ids=decoder_input_ids,
                             past_key_values=EncoderDecoderCache(cache, DynamicCache()), use_cache=True)
            present = out.past_key_values.self_attention_cache
            flat = []
            for i in range(layers):
                flat += [present.layers[i].keys, present.layers[i].values]
            return (out.logits, *flat)

    return Decoder().eval()


def sources(tokenizer) -> dict[str, np.ndarray]:
    """Two real sentences of different lengths, padded as the tokenizer pads: a batch that exercises the mask."""
    enc = tokenizer(list(SOURCES), padding=True, truncation=True, max_length=32, return_tensors="np")
    return {name: enc[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


def step_logits(session: s2s.Seq2SeqSession, batch, tokens: np.ndarray) -> np.ndarray:
    """Logits of the start token and of each of `tokens` fed one at a time (teacher forcing): [b, steps, vocab]."""
    hidden = session.encode(batch["input_ids"], batch["attention_mask"])
    session.reset(tokens.shape[0])
    column = np.full((tokens.shape[0], 1), session.decoder_start_token_id, dtype=np.int64)
    logits = [session.step(column, batch["attention_mask"], hidden)[:, -1]]
    for column in tokens.T[:-1]:
        logits.append(session.step(column[:, None], batch["attention_mask"], hidden)[:, -1])
    return np.stack(logits, axis=1)


def compare(artifact: Artifact, runtime: str, batch, ref_tokens, ref_logits, atol: float, rtol: float = 1e-3):
    """Greedy tokens identical; step logits within atol + rtol * max|logit| (the causal-LM rule)."""
    return causal_lm.compare(artifact, runtime, batch, ref_tokens, ref_logits, atol, rtol, trace=step_logits)


def _onnx(module, example: tuple, names_in: list[str], names_out: list[str], shapes: list[dict], path: Path,
          opset: int) -> None:
    import torch

    # Beyond this the protobuf limit (2 GB) is near: weights go to an external file next to the graph.
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES

    # torch.export prints the partial graph of a failed trace to stderr: the one-line error says what failed.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=True, input_names=names_in, output_names=names_out,
                          dynamic_shapes=(tuple(shapes),), opset_version=max(opset, 18), external_data=large,
                          verbose=False)


def export(source: ModelSource, task_name: str, fmt_name: str, out: Path, *, atol: float | None = None,
           opset: int | None = None, trust_remote_code: bool = False, overwrite: bool = False, progress=None,
           stateful: bool = True) -> Artifact:
    """`stateful` is accepted for the common signature and ignored: seq2seq IRs are stateless (explicit cache)."""
    import torch

    say = progress or (lambda message: None)
    if fmt_name not in ("onnx", "openvino"):
        raise UnsupportedError(f"seq2seq models export to onnx or openvino, not {fmt_name}")
    arch = architecture(source.model_type, task_name)
    the_task = task(task_name)
    say(f"loading {source.spec}")
    model = load_model(source.path, task_name, trust_remote_code, pickle=source.pickle)
    from . import step, tokenizer_for

    tokenizer = tokenizer_for(source.path)
    spec = s2s.spec_from_config(model.config, tokenizer)
    batch = sources(tokenizer)
    reference = s2s.TorchSeq2Seq(model, spec)
    # Example: a real 3-token prefix in the cache and 2 new tokens, batch 2, so no axis is traced as 0 or 1.
    ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    # A family whose cache is not one self-attention key/value pair per decoder layer stops here.
    with step(source.model_type, "running in pytorch with a KV cache"):
        # References first: tracing for export can leave the module in a state whose eager outputs differ.
        ref_tokens = reference.generate(batch["input_ids"], batch["attention_mask"], GREEDY_STEPS, eos_token_id=None)
        ref_logits = step_logits(reference, batch, ref_tokens)
        with torch.inference_mode():
            hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            start = torch.full((2, 1), spec["decoder_start_token_id"], dtype=torch.long)
            prefix_ids = torch.cat([start, torch.from_numpy(ref_tokens[:, :2])], dim=1)
            prefix = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=prefix_ids,
                           use_cache=True).past_key_values.self_attention_cache
        layers = len(prefix.layers)
        past = [t.clone() for layer in prefix.layers for t in (layer.keys, layer.values)]
    past_in, present_out = cache_names(layers)
    past_shape = [-1, *past[0].shape[1:]]
    past_shape[2] = 0
    spec.update({"past_inputs": past_in, "present_outputs": present_out,
                 "past_shape": past_shape, "layers": layers, "stateful": False})
    dynamic = torch.export.Dim.DYNAMIC
    via = "" if fmt_name == "onnx" else " (on the way to openvino)"
    with staging(Path(out), overwrite=overwrite) as tmp:
        graph_dir = tmp if fmt_name == "onnx" else Path(tempfile.mkdtemp(prefix="onnx-", dir=tmp))
        say(f"exporting the encoder to {fmt_name}")
        with step(source.model_type, f"exporting the encoder to onnx{via}"):
            _onnx(_wrap_encoder(model), (ids, mask), ["input_ids", "attention_mask"], ["encoder_hidden_states"],
                  [{0: dynamic, 1: dynamic}] * 2, graph_dir / f"{ENCODER}.onnx", opset or arch.opset)
        say(f"exporting the decoder to {fmt_name} with a KV cache ({layers} layers)")
        new = torch.from_numpy(ref_tokens[:, 2:4].copy())
        with step(source.model_type, f"exporting the decoder to onnx{via}"):
            _onnx(_wrap_decoder(model, layers), (new, mask, hidden.clone(), *past),
                  ["decoder_input_ids", "encoder_attention_mask", "encoder_hidden_states", *past_in],
                  ["logits", *present_out],
                  [{0: dynamic, 1: dynamic}, {0: dynamic, 1: dynamic}, {0: dynamic, 1: dynamic}]
                  + [{0: dynamic, 2: dynamic}] * len(past_in),
                  graph_dir / f"{DECODER}.onnx", opset or arch.opset)
        runtime_config: dict[str, Any] = runtime_config_of("onnx")
        suffix = ".onnx"
        notes = ["two graphs: encoder_model (encoder) and decoder_model (decoder with the self-attention cache as "
                 "inputs/outputs; cross-attention keys/values recomputed each step)"]
        if fmt_name == "openvino":
            import openvino as ov

            for name in (ENCODER, DECODER):
                with step(source.model_type, "converting to openvino"):
                    ov.save_model(ov.convert_model(str(graph_dir / f"{name}.onnx")), str(tmp / f"{name}.xml"),
                                  compress_to_fp16=False)
            shutil.rmtree(graph_dir)
            runtime_config = runtime_config_of("openvino")
            suffix = ".xml"
            notes.append("OpenVINO IRs are stateless: the cache is fed explicitly, as with ONNX Runtime")
        spec["encoder_file"] = ENCODER + suffix
        runtime_config["seq2seq"] = spec
        copy_tokenizer(source.path, tmp)
        manifest = Manifest(
            format=fmt_name, model_file=DECODER + suffix, precision="fp32", task=task_name, source=source.describe(),
            runtime_config=runtime_config, inputs=["input_ids", "attention_mask"], outputs=list(the_task.outputs),
            libraries=describe()["libraries"], built_on=build_record(), notes=notes,
        )
        finalize(tmp, manifest)
        validator = "ort-cpu" if fmt_name == "onnx" else "openvino-cpu"
        say(f"validating {fmt_name} against PyTorch: greedy tokens and step logits")
        manifest.validation = compare(Artifact(tmp, manifest), validator, batch, ref_tokens, ref_logits,
                                      atol if atol is not None else arch.atol)
        finalize(tmp, manifest)
    return Artifact.load(out)
