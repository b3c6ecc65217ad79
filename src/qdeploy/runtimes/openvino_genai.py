"""OpenVINO GenAI: a stateful OpenVINO decoder artifact run by `openvino_genai.LLMPipeline(dir, "CPU")`, with the
tokenizer IRs the exporter writes beside it. The pipeline runs the generation loop in C++ and returns tokens, not
logits: it measures generation speed and anything scored on generated tokens; a metric that needs logits
(perplexity, log-likelihoods) is refused with that reason.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..errors import UnsupportedError
from . import RUNTIMES
from .decoding import Decoder
from .engine import EngineRuntime, greedy_request, pad_rows

TOKENIZER_IR = "openvino_tokenizer.xml"
NO_LOGITS = ("openvino-genai returns generated tokens, not logits: metrics scored on logits (token-agreement, "
             "perplexity, log-likelihoods) are not measured through it")


class OpenVinoGenAIDecoder(Decoder):
    def __init__(self, directory: Path, properties: dict, threads: int | None, **kwargs):
        """`directory`: any folder LLMPipeline loads; `properties`: the CPU plugin's (an fp32 artifact keeps f32
        inference and an f32 cache)."""
        import openvino_genai as og

        super().__init__(**kwargs)
        self._og = og
        properties = dict(properties)
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        self.pipeline = og.LLMPipeline(str(directory), "CPU", **properties)
        self.settings = {"engine": f"openvino-genai {og.__version__}", "properties": {k: str(v) for k, v in
                                                                                       properties.items()},
                         "loop": "engine (C++)"}

    def reset(self, batch: int) -> None:
        raise UnsupportedError(NO_LOGITS)

    def step(self, input_ids, attention_mask):
        raise UnsupportedError(NO_LOGITS)

    def run(self, inputs):
        raise UnsupportedError(NO_LOGITS)

    def _config(self, new_tokens: int, ignore_eos: bool):
        config = self._og.GenerationConfig()
        config.max_new_tokens = new_tokens
        config.do_sample = False
        if ignore_eos:  # generated like any other token, and generation goes on after it
            config.ignore_eos = True
        elif self.eos_token_id is not None:
            config.eos_token_id = int(self.eos_token_id)
        return config

    def _generate(self, ids: np.ndarray, mask: np.ndarray, new_tokens: int, ignore_eos: bool, streamer=None):
        import openvino as ov

        inputs = self._og.TokenizedInputs(ov.Tensor(np.ascontiguousarray(ids, dtype=np.int64)),
                                          ov.Tensor(np.ascontiguousarray(mask, dtype=np.int64)))
        try:
            return self.pipeline.generate(inputs, self._config(new_tokens, ignore_eos), streamer)
        except RuntimeError as exc:  # the engine's checks: one line, a failed cell rather than a failed run
            raise UnsupportedError(f"openvino-genai: {str(exc).strip().splitlines()[0][:300]}") from None

    def generate(self, input_ids, attention_mask=None, max_new_tokens=32, do_sample=False, seed=0, temperature=1.0,
                 top_k=0, eos_token_id=-1) -> np.ndarray:
        ids, mask, ignore_eos = greedy_request("openvino-genai", input_ids, attention_mask, do_sample, eos_token_id,
                                               self.eos_token_id)
        return pad_rows(self._generate(ids, mask, max_new_tokens, ignore_eos).tokens, self.pad_token_id)

    def first_token(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The prompt's greedy next token: what this engine's prefill gives instead of logits."""
        return self.generate(inputs["input_ids"], inputs.get("attention_mask"), 1, eos_token_id=None)

    def timed_generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(time to the first token, time for the rest), greedy, the end token ignored, timed by a streamer that
        notes when each token arrives (the engine's own clock would leave out its tokenization and Python calls)."""
        og = self._og
        clock: list[float] = []

        class Clock(og.StreamerBase):
            def write(self, token):
                clock.append(time.perf_counter())
                return og.StreamingStatus.RUNNING

            def end(self):
                pass

        if input_ids.shape[0] > 1:
            # the engine streams one sequence only: a batch is timed as its prefill with one new token, then the
            # whole generation, the difference being the decode
            t0 = time.perf_counter()
            self._generate(input_ids, attention_mask, 1, ignore_eos=True)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            self._generate(input_ids, attention_mask, new_tokens, ignore_eos=True)
            return first, max(0.0, time.perf_counter() - t0 - first)
        t0 = time.perf_counter()
        self._generate(input_ids, attention_mask, new_tokens, ignore_eos=True, streamer=Clock())
        return clock[0] - t0, clock[-1] - clock[0]


def _load(artifact: Artifact, threads: int | None) -> OpenVinoGenAIDecoder:
    from .decoding import common_args

    return OpenVinoGenAIDecoder(artifact.directory, artifact.manifest.runtime_config.get("openvino", {}), threads,
                                **common_args(artifact))


RUNTIMES.register("openvino-genai")(EngineRuntime(
    "openvino-genai", "openvino", "openvino_genai", "openvino-genai", TOKENIZER_IR,
    "a stateless IR, or one exported by an older qdeploy: export it again, stateful", _load))
