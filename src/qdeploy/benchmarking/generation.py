"""Generation speed of a decoder: time to first token (the prefill), prefill and decode tokens per second.

Greedy, end of sequence ignored, so every repetition decodes the same number of tokens; the prompts are real text of
exactly the requested length (no padding), different on every repetition.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class GenerationScenario:
    prompt_len: int = 128
    new_tokens: int = 64
    batch_sizes: tuple[int, ...] = (1, 4)
    warmup: int = 1
    min_reps: int = 3
    min_time_s: float = 2.0

    def __post_init__(self):
        if self.prompt_len < 1 or self.new_tokens < 2 or self.min_reps < 1:
            raise ConfigError("generation benchmark needs prompt_len >= 1, new_tokens >= 2 and min_reps >= 1")


def _once(session, batch: dict[str, np.ndarray], new_tokens: int) -> tuple[float, float]:
    """(time to the first token, time for the rest). An encoder-decoder encodes the prompt and starts from its start
    token; a decoder-only model takes the prompt as its first step."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if hasattr(session, "timed_generate"):  # an engine: its own loop, timed as it hands out each token
        return session.timed_generate(ids, mask, new_tokens)
    rows = ids.shape[0]
    t0 = time.perf_counter()
    if hasattr(session, "encode"):
        hidden = session.encode(ids, mask)
        session.reset(rows)
        step = lambda tokens: session.step(tokens[:, None], mask, hidden)[:, -1].argmax(-1)
        token = step(np.full(rows, session.decoder_start_token_id, dtype=np.int64))
    else:
        session.reset(rows)
        token = session.step(ids, mask)[:, -1].argmax(-1)

        def step(tokens):
            nonlocal mask
            mask = np.concatenate([mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
            return session.step(tokens[:, None], mask)[:, -1].argmax(-1)
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        token = step(token.astype(np.int64))
    return t1 - t0, time.perf_counter() - t1


@dataclass(frozen=True)
class OnDemand:
    """A decoder loaded for each of its turns and released after it, so that interleaved rounds hold the reference
    and one other session at a time: SmolLM2-135M's nine sessions held together took over 3 GB. Loading is not timed;
    each turn warms its session up first, as the rounds' warm-up does for the sessions held throughout."""
    load: Callable[[], Any]


def _turn(decoder, batch: dict[str, np.ndarray], new_tokens: int) -> tuple[float, float]:
    if not isinstance(decoder, OnDemand):
        return _once(decoder, batch, new_tokens)
    from .memory import release_memory

    session = decoder.load()
    try:
        _once(session, batch, min(new_tokens, 8))
        return _once(session, batch, new_tokens)
    finally:
        del session
        release_memory()


def generates(session) -> bool:
    """Whether the session decodes token by token (causal LM or encoder-decoder)."""
    return hasattr(session, "timed_generate") or (hasattr(session, "step") and hasattr(session, "reset"))


def measure_generation(decoder, inputs: dict[int, list[dict[str, np.ndarray]]],
                       scenario: GenerationScenario) -> list[dict]:
    """`inputs`: batch size -> prompt batches of `prompt_len` tokens. One record per batch size."""
    records = []
    for batch_size in scenario.batch_sizes:
        batches = inputs[batch_size]
        for i in range(scenario.warmup):
            _once(decoder, batches[i % len(batches)], scenario.new_tokens)
        prefill, decode = [], []
        start = time.perf_counter()
        while len(prefill) < scenario.min_reps or time.perf_counter() - start < scenario.min_time_s:
            first, rest = _once(decoder, batches[len(prefill) % len(batches)], scenario.new_tokens)
            prefill.append(first)
            decode.append(rest)
        ttft = float(np.median(prefill))
        decode_s = float(np.median(decode))
        records.append({
            "batch": batch_size, "prompt_len": scenario.prompt_len, "new_tokens": scenario.new_tokens,
            "repetitions": len(prefill),
            "ttft_ms": round(ttft * 1000, 3),
            "prefill_tokens_per_s": round(batch_size * scenario.prompt_len / ttft, 1),
            "decode_tokens_per_s": round(batch_size * (scenario.new_tokens - 1) / decode_s, 1),
            "cv_decode": round(float(np.std(decode) / np.mean(decode)), 4) if len(decode) > 1 else 0.0,
        })
    return records


def generation_rounds(decoders: dict, batches: list[dict[str, np.ndarray]], new_tokens: int, rounds: int,
                      tick=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict, list[str]]:
    """Every decoder generates the same prompts in turn, the order rotating each round: per round, each decoder's
    time to first token and decode time, so that a ratio is taken within a round (as run_rounds does for single
    calls) and a slowdown that hits the whole round cancels. Returns (ttft, decode, load, busy reasons)."""
    from .load import LoadWatch, judge

    names = list(decoders)
    for name in names:  # warm-up: first calls compile and allocate (an on-demand decoder warms up on each turn)
        if not isinstance(decoders[name], OnDemand):
            _once(decoders[name], batches[0], min(new_tokens, 8))
    ttft: dict[str, list[float]] = {name: [] for name in names}
    decode: dict[str, list[float]] = {name: [] for name in names}
    with LoadWatch() as watch:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                time.sleep(0.03)  # let the previous runtime's spinning threads go (interleaved.PAUSE_S)
                first, rest = _turn(decoders[name], batches[r % len(batches)], new_tokens)
                ttft[name].append(first)
                decode[name].append(rest)
            if tick:
                tick()
    load = {"before_load1": round(watch.load1_before, 2), **watch.sample.to_dict()}
    return ({n: np.array(v) for n, v in ttft.items()}, {n: np.array(v) for n, v in decode.items()}, load,
            judge(watch.sample, watch.load1_before).reasons)
