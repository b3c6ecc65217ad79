from __future__ import annotations

import itertools

import numpy as np

from ..errors import ConfigError
from ..textdata import builtin_path


def benchmark_inputs(tokenizer, input_names: list[str], batch: int, seq_len: int, count: int = 4,
                     max_positions: int | None = None) -> list[dict[str, np.ndarray]]:
    """`count` different batches of real text, each row exactly `seq_len` tokens of running text (no padding).

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
    batches = []
    for start in range(0, len(rows), batch):
        enc = tokenizer(rows[start:start + batch], padding="max_length", truncation=True, max_length=seq_len,
                        return_tensors="np")
        batches.append({name: enc[name].astype(np.int64) for name in input_names})
    return batches
