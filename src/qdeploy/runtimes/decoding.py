"""Token-by-token decoding with a KV cache on every runtime: one `Decoder` interface, one `generate` loop.

A decoder artifact's manifest says how its cache is carried (`runtime_config["decoder"]`): as explicit
`past_key_values.N.*` inputs and `present.N.*` outputs (ONNX, stateless OpenVINO), or inside the model as OpenVINO
state. PyTorch eager keeps a transformers `DynamicCache`. Everything above this module sees only `reset` and `step`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..artifact import Artifact
from ..errors import ConfigError, UnsupportedError


def positions(attention_mask: np.ndarray, new: int) -> np.ndarray:
    """Position ids of the last `new` tokens: left padding does not count, so a padded row starts at 0."""
    pos = np.cumsum(attention_mask, axis=1) - 1
    return np.clip(pos, 0, None)[:, -new:].astype(np.int64)


class Decoder:
    """`reset(batch)` starts new sequences; `step(ids, mask)` feeds tokens and returns their logits [b, t, vocab].

    `mask` covers every token fed so far plus the new ones (0 for left padding), as in transformers.
    """
    output_names = ["logits"]

    def __init__(self, input_names: list[str], pad_token_id: int, eos_token_id: int | None):
        self.input_names = input_names
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self._uses_positions = "position_ids" in input_names

    def reset(self, batch: int) -> None:
        raise NotImplementedError

    def _forward(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if self._uses_positions:
            feed["position_ids"] = positions(attention_mask, input_ids.shape[1])
        return self._forward(feed)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One full forward pass from an empty cache: what scoring and the prefill benchmark need."""
        self.reset(inputs["input_ids"].shape[0])
        return {"logits": self.step(inputs["input_ids"], inputs["attention_mask"])}

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, max_new_tokens: int = 32,
                 do_sample: bool = False, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
                 eos_token_id: int | None = -1) -> np.ndarray:
        return generate(self, input_ids, attention_mask, max_new_tokens, do_sample, seed, temperature, top_k,
                        self.eos_token_id if eos_token_id == -1 else eos_token_id)


def generate(decoder: Decoder, input_ids: np.ndarray, attention_mask: np.ndarray | None, max_new_tokens: int,
             do_sample: bool = False, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
             eos_token_id: int | None = None) -> np.ndarray:
    """New tokens [batch, <= max_new_tokens]; a row that produced `eos_token_id` is padded after it.

    Prompts are left-padded (mask 0 on the left), so every row's next token sits in the last column.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ConfigError(f"sampling needs a temperature > 0, got {temperature}")
    input_ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    batch = input_ids.shape[0]
    rng = np.random.default_rng(seed)
    decoder.reset(batch)
    logits = decoder.step(input_ids, mask)[:, -1]
    finished = np.zeros(batch, dtype=bool)
    out: list[np.ndarray] = []
    for i in range(max_new_tokens):
        token = _choose(logits, do_sample, rng, temperature, top_k)
        token = np.where(finished, decoder.pad_token_id, token)
        out.append(token)
        if eos_token_id is not None:
            finished |= token == eos_token_id
        if finished.all() or i == max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        logits = decoder.step(token[:, None], mask)[:, -1]
    return np.stack(out, axis=1)


def _choose(logits: np.ndarray, do_sample: bool, rng, temperature: float, top_k: int) -> np.ndarray:
    if not do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    scaled = logits.astype(np.float64) / temperature
    if top_k > 0:
        kth = np.sort(scaled, axis=-1)[:, -min(top_k, scaled.shape[-1])][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs], dtype=np.int64)


class _ExplicitCache(Decoder):
    """Cache carried as graph inputs and outputs: the runtime returns `present.*`, fed back as `past_key_values.*`."""

    def __init__(self, spec: dict[str, Any], **kwargs):
        super().__init__(**kwargs)
        self._past_names = spec["past_inputs"]
        self._present_names = spec["present_outputs"]
        self._past_shape = spec["past_shape"]  # with -1 for the batch and 0 for the (empty) sequence
        self._past: dict[str, np.ndarray] = {}

    def reset(self, batch: int) -> None:
        shape = [batch if d == -1 else d for d in self._past_shape]
        empty = np.zeros(shape, dtype=np.float32)
        self._past = {name: empty for name in self._past_names}

    def _forward(self, feed):
        outputs = self._infer({**feed, **self._past})
        self._past = {past: outputs[present] for past, present in zip(self._past_names, self._present_names)}
        return outputs["logits"]


class OrtDecoder(_ExplicitCache):
    def __init__(self, artifact: Artifact, provider: str, provider_options: dict, threads: int | None, **kwargs):
        from .ort_session import session

        super().__init__(**kwargs)
        self.session = session(artifact, [(provider, provider_options)], threads)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _infer(self, feed):
        return dict(zip(self._outputs, self.session.run(self._outputs, feed)))


class OpenVinoDecoder(_ExplicitCache):
    """Stateful IR: the cache lives in the infer request (reset_state starts new sequences); stateless IR: explicit."""

    def __init__(self, artifact: Artifact, threads: int | None, stateful: bool, **kwargs):
        import openvino as ov

        super().__init__(**kwargs)
        properties = {"PERFORMANCE_HINT": "LATENCY", **artifact.manifest.runtime_config.get("openvino", {})}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(artifact.model_path), "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.stateful = stateful
        self._beam_idx = any(port.get_any_name() == "beam_idx" for port in self.compiled.inputs)
        self.properties = {k: str(v) for k, v in properties.items()}

    def reset(self, batch: int) -> None:
        if self.stateful:
            self.request.reset_state()
        else:
            super().reset(batch)

    def _infer(self, feed):
        if self._beam_idx:  # the rows of the cache to keep, in order: all of them
            feed = {**feed, "beam_idx": np.arange(feed["input_ids"].shape[0], dtype=np.int32)}
        result = self.request.infer(feed)
        return {port.get_any_name(): np.array(result[port]) for port in self.compiled.outputs}

    def _forward(self, feed):
        if self.stateful:
            return self._infer(feed)["logits"]
        return super()._forward(feed)


class TorchDecoder(Decoder):
    def __init__(self, model, **kwargs):
        import torch

        super().__init__(**kwargs)
        self._torch = torch
        self.model = model
        self._cache = None

    def reset(self, batch: int) -> None:
        from transformers import DynamicCache

        self._cache = DynamicCache()

    def _forward(self, feed):
        torch = self._torch
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()},
                             past_key_values=self._cache, use_cache=True)
        self._cache = out.past_key_values
        return out.logits.float().numpy()


class DecoderFeeds:
    """A tokenizer whose batches are complete inputs of a decoder graph: the token ids and mask, the positions and,
    where the graph carries the cache explicitly, an empty cache. What calibration needs to run a decoder whole."""

    def __init__(self, tokenizer, artifact: Artifact):
        self._tokenizer = tokenizer
        self._spec = decoder_spec(artifact) or {}
        explicit = not self._spec.get("stateful") and artifact.format != "pytorch"
        self._past = self._spec.get("past_inputs", []) if explicit else []
        self._beam_idx = "beam_idx" in artifact.manifest.inputs

    @property
    def text_tokenizer(self):
        """The tokenizer it wraps: what metrics take, as they build a decoder's inputs themselves."""
        return self._tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, texts, **kwargs) -> dict[str, np.ndarray]:
        encoded = dict(self._tokenizer(texts, **{**kwargs, "return_tensors": "np"}))
        mask = encoded["attention_mask"].astype(np.int64)
        encoded["position_ids"] = positions(mask, mask.shape[1])
        if self._beam_idx:
            encoded["beam_idx"] = np.arange(mask.shape[0], dtype=np.int32)
        if self._past:
            shape = [mask.shape[0] if d == -1 else d for d in self._spec["past_shape"]]
            empty = np.zeros(shape, dtype=np.float32)
            encoded.update({name: empty for name in self._past})
        return encoded


def _torch_decoder(artifact: Artifact, runtime, threads, spec, common) -> Decoder:
    import torch

    from ..tasks import load_model

    if threads:
        torch.set_num_threads(threads)
    model = load_model(artifact.directory, artifact.manifest.task,
                       trust_remote_code=bool(artifact.manifest.runtime_config.get("trust_remote_code")),
                       pickle=bool(artifact.manifest.source.get("pickle")))
    return TorchDecoder(model, **common)


# By artifact format; ONNX runs on whichever execution provider the runtime names.
_BUILDERS = {
    "pytorch": _torch_decoder,
    "onnx": lambda artifact, runtime, threads, spec, common: OrtDecoder(
        artifact, runtime.provider, runtime.provider_options, threads, spec=spec, **common),
    "openvino": lambda artifact, runtime, threads, spec, common: OpenVinoDecoder(
        artifact, threads, bool(spec.get("stateful")), spec=spec, **common),
}


def decoder_spec(artifact: Artifact) -> dict[str, Any] | None:
    return artifact.manifest.runtime_config.get("decoder")


def load(artifact: Artifact, runtime, threads: int | None = None) -> Decoder:
    """The decoder for a generative artifact on `runtime` (a registered Runtime object)."""
    spec = decoder_spec(artifact)
    if spec is None:
        raise UnsupportedError(f"{artifact.directory} is not a generative artifact (its manifest has no decoder spec)")
    if artifact.format not in _BUILDERS:
        raise UnsupportedError(f"no decoder for {artifact.format} artifacts; decoders exist for {', '.join(_BUILDERS)}")
    return _BUILDERS[artifact.format](artifact, runtime, threads, spec, common_args(artifact))


def common_args(artifact: Artifact) -> dict[str, Any]:
    """What every Decoder of this artifact takes: its token inputs (not the cache), pad and end tokens."""
    spec = decoder_spec(artifact) or {}
    past = set(spec.get("past_inputs", [])) | {"beam_idx"}
    return {"input_names": [n for n in artifact.manifest.inputs if n not in past],
            "pad_token_id": int(spec.get("pad_token_id") or 0), "eos_token_id": spec.get("eos_token_id")}
