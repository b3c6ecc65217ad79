"""What the language-model engines read beside a decoder's graph, so that an artifact loads in them unchanged:
ONNX Runtime GenAI's `genai_config.json` (an ONNX decoder) and OpenVINO GenAI's tokenizer and detokenizer IRs (a
stateful OpenVINO decoder; the IR itself gets its `beam_idx` input from the exporter).

Everything is derived from the artifact: the cache layout from the manifest's decoder spec, the model's sizes from
its config.json, the end tokens from generation_config.json. A quantized artifact writes its own genai_config.json
(its graph file may differ from its parent's); the tokenizer IRs travel with the tokenizer files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .artifact import ENGINE_FILES

GENAI_CONFIG = ENGINE_FILES[0]
OPENVINO_TOKENIZERS = ENGINE_FILES[1:]


def _pattern(names: list[str], layers: int) -> str | None:
    """`past_key_values.%d.key` from the per-layer names, when they follow one pattern with the layer number."""
    if len(names) != layers or not names:
        return None
    first = names[0]
    match = re.search(r"(?<![0-9])0(?![0-9])", first)
    if not match:
        return None
    pattern = first[:match.start()] + "%d" + first[match.end():]
    return pattern if all(name == pattern % i for i, name in enumerate(names)) else None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def genai_config(directory: Path, model_file: str, inputs: list[str], spec: dict[str, Any],
                 share_buffer: bool = False) -> dict[str, Any] | None:
    """ONNX Runtime GenAI's config for an ONNX decoder whose cache is carried as inputs and outputs (past and present
    in separate buffers), or None when the graph's cache does not fit its layout (one key and one value per layer,
    [batch, kv heads, sequence, head size])."""
    layers = int(spec.get("layers") or 0)
    past, present = spec.get("past_inputs", []), spec.get("present_outputs", [])
    names = {"past_key_names": _pattern(past[0::2], layers), "past_value_names": _pattern(past[1::2], layers),
             "present_key_names": _pattern(present[0::2], layers),
             "present_value_names": _pattern(present[1::2], layers)}
    shape = spec.get("past_shape") or []
    if None in names.values() or len(shape) != 4 or spec.get("stateful"):
        return None
    config = _read_json(directory / "config.json")
    generation = _read_json(directory / "generation_config.json")
    kv_heads, head_size = int(shape[1]), int(shape[3])
    heads = config.get("num_attention_heads") or config.get("n_head") or kv_heads
    eos = generation.get("eos_token_id", config.get("eos_token_id", spec.get("eos_token_id")))
    pad = spec.get("pad_token_id")
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    context = next((config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
                    if isinstance(config.get(k), int)), 2048)
    graph_inputs = {name: name for name in ("input_ids", "attention_mask", "position_ids") if name in inputs}
    model = {
            "type": "decoder",  # ORT GenAI's generic decoder: the names below say where everything is
            "bos_token_id": generation.get("bos_token_id", config.get("bos_token_id")),
            "eos_token_id": eos, "pad_token_id": pad, "context_length": int(context),
            "vocab_size": int(config.get("vocab_size") or 0),
            "decoder": {
                "filename": model_file,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": head_size, "hidden_size": int(config.get("hidden_size") or config.get("n_embd") or 0),
                "num_attention_heads": int(heads), "num_key_value_heads": kv_heads, "num_hidden_layers": layers,
                "inputs": {**graph_inputs, "past_key_names": names["past_key_names"],
                           "past_value_names": names["past_value_names"]},
                "outputs": {"logits": "logits", "present_key_names": names["present_key_names"],
                            "present_value_names": names["present_value_names"]},
            },
    }
    return {
        "model": {key: value for key, value in model.items() if value is not None},  # the engine refuses nulls
        # Greedy by default, as qdeploy measures; the engine's caller may override any of these per request.
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": int(context),
                   "min_length": 0, "past_present_share_buffer": share_buffer, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }


def write_genai_config(directory: Path, model_file: str, inputs: list[str], spec: dict[str, Any],
                       share_buffer: bool = False) -> str | None:
    """Write genai_config.json for an ONNX decoder; None when written, else why ONNX Runtime GenAI cannot load it.
    share_buffer: every layer's cache goes through GroupQueryAttention, so past and present may be one buffer."""
    config = genai_config(directory, model_file, inputs, spec, share_buffer)
    if config is None:
        return "its cache is not one key and one value per layer, [batch, heads, sequence, head size]"
    (directory / GENAI_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return None


def write_openvino_tokenizers(tokenizer, directory: Path) -> str | None:
    """OpenVINO GenAI's tokenizer and detokenizer IRs, converted by openvino-tokenizers from the Hugging Face
    tokenizer; None when written, else why not (the artifact still runs everywhere but in OpenVINO GenAI)."""
    try:
        import openvino as ov
        from openvino_tokenizers import convert_tokenizer
    except ImportError:
        return "openvino-tokenizers is not installed"
    try:
        encoder, decoder = convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as exc:  # the converter raises many kinds for tokenizers it does not know
        return f"openvino-tokenizers could not convert the tokenizer ({type(exc).__name__}: {exc})".split("\n")[0]
    ov.save_model(encoder, str(directory / OPENVINO_TOKENIZERS[0]))
    ov.save_model(decoder, str(directory / OPENVINO_TOKENIZERS[2]))
    return None
