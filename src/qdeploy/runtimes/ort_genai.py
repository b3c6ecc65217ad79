"""ONNX Runtime GenAI: a decoder artifact run by the engine people deploy ONNX language models with
(`onnxruntime_genai.Model(dir)`, driven by the artifact's genai_config.json). The engine runs the generation loop
in C++; qdeploy only hands it the prompt and reads what comes back, so a speed measured here is the engine's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..errors import UnsupportedError
from . import RUNTIMES
from .decoding import Decoder
from .engine import EngineRuntime, greedy_request, pad_rows

GENAI_CONFIG = "genai_config.json"


class OrtGenAIDecoder(Decoder):
    """`run` and `step` give the graph's own logits (all positions fed); `generate` and `timed_generate` run the
    engine's greedy loop. The engine masks the pad token: qdeploy's left padding is written as that token."""

    def __init__(self, directory: Path, threads: int | None, **kwargs):
        """`directory`: any folder ORT GenAI loads (a qdeploy artifact, or what the engine's model builder wrote)."""
        import onnxruntime_genai as og

        super().__init__(**kwargs)
        self._og = og
        config = og.Config(str(directory))
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1} if threads else {}
        if options:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        genai = json.loads((directory / GENAI_CONFIG).read_text(encoding="utf-8"))["model"]
        self._context = int(genai.get("context_length") or 2048)
        self._pad = int(genai.get("pad_token_id", self.pad_token_id))
        self._generator = None
        self._appended = 0
        # One buffer for past and present (a GroupQueryAttention graph) is allocated at max_length for every row:
        # each request asks for the length it needs, never the model's whole context.
        self._shared = bool(json.loads((directory / GENAI_CONFIG).read_text(encoding="utf-8"))
                            .get("search", {}).get("past_present_share_buffer", False))
        self._length_hint: int | None = None
        self.settings = {"engine": f"onnxruntime-genai {og.__version__}", "threads": threads,
                         "past_present_share_buffer": self._shared, "loop": "engine (C++)"}

    def _new(self, batch: int, max_length: int | None = None, min_length: int = 0):
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(batch_size=batch, max_length=max_length or self._context, min_length=min_length,
                                  do_sample=False)
        self._generator = self._og.Generator(self.model, params)
        self._appended = 0

    def reset(self, batch: int) -> None:
        self._new(batch, max_length=self._length_hint)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits of the tokens fed. The engine (0.18) attends to every token it is given and numbers positions
        from 0, so a row's left padding is left out; a padded batch of several rows is refused (see `run`)."""
        if self._appended and input_ids.shape[0] > 1:
            raise UnsupportedError("onnxruntime-genai takes one prompt per batched sequence: after the first step, "
                                   "a batch of more than one row continues only through its own generate loop")
        real = attention_mask[:, -input_ids.shape[1]:] > 0
        if not real.all():
            if input_ids.shape[0] > 1 or self._appended:
                raise UnsupportedError("onnxruntime-genai does not mask padding: give it rows of one length")
            input_ids = input_ids[:, real[0]]
        self._generator.append_tokens(np.ascontiguousarray(input_ids, dtype=np.int32))
        self._appended += 1
        logits = np.asarray(self._generator.get_output("logits"), dtype=np.float32)
        if logits.shape[1] < real.shape[1]:  # the padding's place, as the other runtimes return it
            pad = np.zeros((logits.shape[0], real.shape[1] - logits.shape[1], logits.shape[2]), np.float32)
            logits = np.concatenate([pad, logits], axis=1)
        return logits

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Logits of every position; a left-padded batch is run a row at a time (the padding's logits are 0)."""
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        self._length_hint = min(self._context, ids.shape[1] + 1)  # one forward pass: its own length is enough
        try:
            if mask is None or mask.all() or ids.shape[0] == 1:
                return super().run({"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask})
            return {"logits": np.concatenate([super(OrtGenAIDecoder, self).run(
                {"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]})["logits"]
                for i in range(ids.shape[0])])}
        finally:
            self._length_hint = None

    def generate(self, input_ids, attention_mask=None, max_new_tokens=32, do_sample=False, seed=0, temperature=1.0,
                 top_k=0, eos_token_id=-1) -> np.ndarray:
        ids, mask, ignore_eos = greedy_request("onnxruntime-genai", input_ids, attention_mask, do_sample, eos_token_id,
                                               self.eos_token_id)
        if ids.shape[0] > 1 and not mask.all():  # a row at a time: the engine would attend to the padding
            return pad_rows([self._greedy(ids[i:i + 1], mask[i:i + 1], max_new_tokens, ignore_eos)[0]
                             for i in range(ids.shape[0])], self.pad_token_id)
        return self._greedy(ids, mask, max_new_tokens, ignore_eos)

    def _greedy(self, ids: np.ndarray, mask: np.ndarray, new_tokens: int, ignore_eos: bool,
                clock: list[float] | None = None) -> np.ndarray:
        length = int(mask.sum(axis=1).max()) + new_tokens
        batch = ids.shape[0]
        # The end token ignored: one row feeds it on and goes on, as the other runtimes do; a batch cannot append
        # again (ORT GenAI 0.18), so there min_length keeps the engine from choosing it at all.
        self._new(batch, max_length=min(self._context, length + new_tokens),
                  min_length=length if ignore_eos and batch > 1 else 0)
        self.step(ids, mask)
        out: list[np.ndarray] = []
        while len(out) < new_tokens:
            if self._generator.is_done():
                if not ignore_eos or batch > 1:
                    break
                self._generator.append_tokens(out[-1][:, None].astype(np.int32))
            self._generator.generate_next_token()
            out.append(np.asarray(self._generator.get_next_tokens(), dtype=np.int64))
            if clock is not None:
                clock.append(time.perf_counter())
        tokens = np.stack(out, axis=1)
        if not ignore_eos and self.eos_token_id is not None:  # after the end token, pad (as decoding.generate does)
            ended = np.cumsum(tokens == self.eos_token_id, axis=1) - (tokens == self.eos_token_id) > 0
            tokens = np.where(ended, self.pad_token_id, tokens)
        return tokens

    def timed_generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(time to the first token, time for the rest), greedy, the end token ignored."""
        clock: list[float] = []
        t0 = time.perf_counter()
        self._greedy(input_ids, attention_mask, new_tokens, ignore_eos=True, clock=clock)
        return clock[0] - t0, clock[-1] - clock[0]


def _load(artifact: Artifact, threads: int | None) -> OrtGenAIDecoder:
    from .decoding import common_args

    return OrtGenAIDecoder(artifact.directory, threads, **common_args(artifact))


RUNTIMES.register("ort-genai")(EngineRuntime("ort-genai", "onnx", "onnxruntime_genai", "onnxruntime-genai",
                                             GENAI_CONFIG, "export it again with this qdeploy", _load))
