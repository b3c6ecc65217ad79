"""Encoder-decoder generation on every runtime: one `Seq2SeqSession` interface, one `generate` loop.

A seq2seq artifact holds two graphs (`runtime_config["seq2seq"]["encoder_file"]` and the manifest's `model_file`, the
decoder). The decoder carries its self-attention cache as explicit `past_key_values.N.decoder.*` inputs and
`present.N.decoder.*` outputs and recomputes cross-attention from `encoder_hidden_states`. PyTorch eager keeps a
transformers `EncoderDecoderCache`. Every row of the decoder starts with `decoder_start_token_id` and grows one token
per step, so the decoder side needs no mask or positions of its own.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..artifact import Artifact, safe_join
from ..errors import ConfigError, UnsupportedError
from .decoding import _choose


def spec_from_config(config, tokenizer=None) -> dict[str, Any]:
    """The token ids a generation loop needs, from the model's config (the tokenizer's pad if the config has none)."""
    pad = config.pad_token_id
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    start = config.decoder_start_token_id
    if start is None:
        start = pad
    if start is None:
        raise UnsupportedError(f"{config.model_type} config has neither decoder_start_token_id nor pad_token_id; "
                               "set decoder_start_token_id in config.json")
    eos = config.eos_token_id
    return {"decoder_start_token_id": int(start), "pad_token_id": int(pad or 0),
            "eos_token_id": eos if isinstance(eos, int) else None}


class Seq2SeqSession:
    """`encode(ids, mask)` -> encoder states; `reset(batch)` starts new outputs; `step(tokens, mask, states)` feeds
    decoder tokens and returns their logits [b, t, vocab]."""
    input_names = ["input_ids", "attention_mask"]
    output_names = ["logits"]

    def __init__(self, spec: dict[str, Any]):
        self.decoder_start_token_id = int(spec["decoder_start_token_id"])
        self.pad_token_id = int(spec.get("pad_token_id") or 0)
        self.eos_token_id = spec.get("eos_token_id")

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(self, batch: int) -> None:
        raise NotImplementedError

    def step(self, tokens: np.ndarray, attention_mask: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encoder plus the first decoder step: the latency of the work every request does before its second token."""
        ids = np.asarray(inputs["input_ids"], dtype=np.int64)
        mask = np.asarray(inputs.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
        hidden = self.encode(ids, mask)
        self.reset(ids.shape[0])
        start = np.full((ids.shape[0], 1), self.decoder_start_token_id, dtype=np.int64)
        return {"logits": self.step(start, mask, hidden)}

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, max_new_tokens: int = 32,
                 do_sample: bool = False, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
                 eos_token_id: int | None = -1) -> np.ndarray:
        """New tokens [batch, <= max_new_tokens] (without the start token); rows padded after their eos."""
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ConfigError(f"sampling needs a temperature > 0, got {temperature}")
        eos = self.eos_token_id if eos_token_id == -1 else eos_token_id
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        batch = ids.shape[0]
        rng = np.random.default_rng(seed)
        hidden = self.encode(ids, mask)
        self.reset(batch)
        token = np.full(batch, self.decoder_start_token_id, dtype=np.int64)
        finished = np.zeros(batch, dtype=bool)
        out: list[np.ndarray] = []
        for i in range(max_new_tokens):
            logits = self.step(token[:, None], mask, hidden)[:, -1]
            token = np.where(finished, self.pad_token_id, _choose(logits, do_sample, rng, temperature, top_k))
            out.append(token)
            if eos is not None:
                finished |= token == eos
            if finished.all():
                break
        return np.stack(out, axis=1)


class _ExplicitCache(Seq2SeqSession):
    """Self-attention cache as graph inputs and outputs; `_encoder` and `_decoder` run one graph each."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__(spec)
        self._past_names = spec["past_inputs"]
        self._present_names = spec["present_outputs"]
        self._past_shape = spec["past_shape"]  # -1 for the batch, 0 for the (empty) sequence
        self._past: dict[str, np.ndarray] = {}

    def reset(self, batch: int) -> None:
        empty = np.zeros([batch if d == -1 else d for d in self._past_shape], dtype=np.float32)
        self._past = {name: empty for name in self._past_names}

    def encode(self, input_ids, attention_mask):
        return self._encoder({"input_ids": input_ids.astype(np.int64),
                              "attention_mask": attention_mask.astype(np.int64)})["encoder_hidden_states"]

    def step(self, tokens, attention_mask, hidden):
        outputs = self._decoder({"decoder_input_ids": tokens.astype(np.int64),
                                 "encoder_attention_mask": attention_mask.astype(np.int64),
                                 "encoder_hidden_states": hidden, **self._past})
        self._past = {past: outputs[present] for past, present in zip(self._past_names, self._present_names)}
        return outputs["logits"]


class OrtSeq2Seq(_ExplicitCache):
    def __init__(self, artifact: Artifact, spec, provider: str, provider_options: dict, threads: int | None):
        import onnxruntime as ort

        super().__init__(spec)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1

        def session(path):
            made = ort.InferenceSession(str(path), options, providers=[provider], provider_options=[provider_options])
            names = [o.name for o in made.get_outputs()]
            return lambda feed: dict(zip(names, made.run(names, feed)))

        self._encoder = session(safe_join(artifact.directory, spec["encoder_file"]))
        self._decoder = session(artifact.model_path)
        self.settings = {"providers": [provider]}


class OpenVinoSeq2Seq(_ExplicitCache):
    def __init__(self, artifact: Artifact, spec, threads: int | None):
        import openvino as ov

        super().__init__(spec)
        properties = {"PERFORMANCE_HINT": "LATENCY", **artifact.manifest.runtime_config.get("openvino", {})}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()

        def request(path):
            compiled = core.compile_model(str(path), "CPU", properties)
            infer = compiled.create_infer_request()

            def run(feed):
                result = infer.infer(feed)
                return {port.get_any_name(): np.array(result[port]) for port in compiled.outputs}

            return run

        self._encoder = request(safe_join(artifact.directory, spec["encoder_file"]))
        self._decoder = request(artifact.model_path)
        self.settings = {k: str(v) for k, v in properties.items()}


class TorchSeq2Seq(Seq2SeqSession):
    def __init__(self, model, spec: dict[str, Any] | None = None):
        import torch

        super().__init__(spec or spec_from_config(model.config))
        self._torch = torch
        self.model = model
        self._cache = None

    def encode(self, input_ids, attention_mask):
        torch = self._torch
        with torch.inference_mode():
            return self.model.get_encoder()(input_ids=torch.from_numpy(np.ascontiguousarray(input_ids)),
                                            attention_mask=torch.from_numpy(np.ascontiguousarray(attention_mask)),
                                            ).last_hidden_state.float().numpy()

    def reset(self, batch: int) -> None:
        from transformers import DynamicCache, EncoderDecoderCache

        self._cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(self, tokens, attention_mask, hidden):
        torch = self._torch
        with torch.inference_mode():
            out = self.model(encoder_outputs=(torch.from_numpy(hidden),),
                             attention_mask=torch.from_numpy(np.ascontiguousarray(attention_mask)),
                             decoder_input_ids=torch.from_numpy(np.ascontiguousarray(tokens)),
                             past_key_values=self._cache, use_cache=True)
        self._cache = out.past_key_values
        return out.logits.float().numpy()


def _torch_session(artifact: Artifact, runtime, threads, spec) -> Seq2SeqSession:
    import torch

    from ..tasks import load_model

    if threads:
        torch.set_num_threads(threads)
    model = load_model(artifact.directory, artifact.manifest.task,
                       trust_remote_code=bool(artifact.manifest.runtime_config.get("trust_remote_code")),
                       pickle=bool(artifact.manifest.source.get("pickle")))
    return TorchSeq2Seq(model, {**spec_from_config(model.config), **spec})


# By artifact format; ONNX runs on whichever execution provider the runtime names.
_BUILDERS = {
    "pytorch": _torch_session,
    "onnx": lambda artifact, runtime, threads, spec: OrtSeq2Seq(artifact, spec, runtime.provider,
                                                                runtime.provider_options, threads),
    "openvino": lambda artifact, runtime, threads, spec: OpenVinoSeq2Seq(artifact, spec, threads),
}


def copy_encoder(parent: Artifact, target) -> dict[str, Any]:
    """Copy a seq2seq artifact's encoder graph (and its weights) into `target`, for a variant that changes only
    the decoder; returns the spec the variant keeps."""
    import shutil
    from pathlib import Path

    spec = seq2seq_spec(parent) or {}
    stem = Path(spec["encoder_file"]).stem
    for rel in parent.manifest.files:
        if Path(rel).name.startswith(stem + "."):
            shutil.copy2(safe_join(parent.directory, rel), Path(target) / rel)
    return dict(spec)


def seq2seq_spec(artifact: Artifact) -> dict[str, Any] | None:
    return artifact.manifest.runtime_config.get("seq2seq")


def load(artifact: Artifact, runtime, threads: int | None = None) -> Seq2SeqSession:
    """The session for a seq2seq artifact on `runtime` (a registered Runtime object)."""
    spec = seq2seq_spec(artifact)
    if spec is None:
        raise UnsupportedError(f"{artifact.directory} is not a seq2seq artifact (its manifest has no seq2seq spec)")
    if artifact.format not in _BUILDERS:
        raise UnsupportedError(f"no seq2seq session for {artifact.format} artifacts; "
                               f"they exist for {', '.join(_BUILDERS)}")
    return _BUILDERS[artifact.format](artifact, runtime, threads, spec)
