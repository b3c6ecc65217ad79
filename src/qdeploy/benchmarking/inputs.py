from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..textdata import builtin_path


@dataclass(frozen=True)
class BenchCase:
    """The real texts of one input shape and the same texts tokenized: model-only timing runs `inputs`,
    end-to-end timing tokenizes `texts` inside the timed loop and so feeds the model the very same tokens."""
    texts: list[list[str]]
    inputs: list[dict[str, np.ndarray]]
    tokenizer: Any
    input_names: list[str]
    seq_len: int

    @property
    def batch(self) -> int:
        return len(self.texts[0])


def tokenize(tokenizer, texts: list[str], input_names: list[str], seq_len: int) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {name: enc[name].astype(np.int64) for name in input_names}


def benchmark_texts(tokenizer, batch: int, seq_len: int, count: int = 4,
                    max_positions: int | None = None) -> list[list[str]]:
    """`count` different batches of real text, each row at least `seq_len` tokens of running text.

    Rows are consecutive sentences joined until the length is reached, so attention sees real tokens, not zeros;
    the batches differ so caches do not flatter any runtime.
    """
    if batch < 1 or seq_len < 2:
        raise ConfigError(f"batch must be >= 1 and sequence length >= 2, got batch {batch}, seq_len {seq_len}")
    if max_positions and seq_len > max_positions:
        raise ConfigError(f"sequence length {seq_len} is beyond what the model allows ({max_positions} positions)")
    sentences = builtin_path("heldout.txt").read_text(encoding="utf-8").splitlines()
    sentences += builtin_path("calibration.txt").read_text(encoding="utf-8").splitlines()
    stream = itertools.cycle(sentences)
    rows = []
    for _ in range(batch * count):
        text = ""
        while len(tokenizer(text, add_special_tokens=True)["input_ids"]) < seq_len:
            text = (text + " " + next(stream)).strip()
        rows.append(text)
    return [rows[start:start + batch] for start in range(0, len(rows), batch)]


def benchmark_case(tokenizer, input_names: list[str], batch: int, seq_len: int, count: int = 4,
                   max_positions: int | None = None) -> BenchCase:
    texts = benchmark_texts(tokenizer, batch, seq_len, count, max_positions)
    inputs = [tokenize(tokenizer, rows, input_names, seq_len) for rows in texts]
    return BenchCase(texts, inputs, tokenizer, list(input_names), seq_len)


def benchmark_inputs(tokenizer, input_names: list[str], batch: int, seq_len: int, count: int = 4,
                     max_positions: int | None = None) -> list[dict[str, np.ndarray]]:
    """`count` tokenized batches, each row exactly `seq_len` tokens of real text (no padding)."""
    return benchmark_case(tokenizer, input_names, batch, seq_len, count, max_positions).inputs
