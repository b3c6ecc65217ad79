from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import ConfigError, InputError
from ..textdata import BUILTIN, iter_texts, sample


@dataclass(frozen=True)
class CalibrationSource:
    """Real text that becomes calibration batches. `spec` is `builtin`, a text/TSV/CSV/JSONL file, or `FILE:COLUMN`."""
    spec: str = BUILTIN
    samples: int = 128
    seed: int = 0
    max_length: int = 128
    batch_size: int = 8
    # "longest" pads each batch to its longest sample; "max_length" pads every batch to max_length (histogram
    # calibrators stack all batches, so they need one shape).
    padding: str = "longest"

    def __post_init__(self):
        for name in ("samples", "max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"calibration {name} must be at least 1, got {getattr(self, name)}")
        if self.padding not in ("longest", "max_length"):
            raise ConfigError(f"calibration padding must be longest or max_length, got {self.padding!r}")

    def texts(self) -> list[str]:
        texts = sample(iter_texts(self.spec), self.samples, self.seed)
        if not texts:
            raise InputError(f"calibration source {self.spec} is empty")
        return texts

    def batch_count(self) -> int:
        """How many batches `batches()` yields (NNCF's subset_size counts dataset items, which are batches here)."""
        return -(-len(self.texts()) // self.batch_size)

    def batches(self, tokenizer, input_names: list[str]) -> Iterator[dict[str, np.ndarray]]:
        """Tokenized batches, by default padded to the longest sample of each batch (as real traffic is)."""
        texts = self.texts()
        padding = True if self.padding == "longest" else "max_length"
        for start in range(0, len(texts), self.batch_size):
            encoded = tokenizer(texts[start:start + self.batch_size], padding=padding, truncation=True,
                                max_length=self.max_length, return_tensors="np")
            yield {name: encoded[name].astype(np.int64) for name in input_names}

    def ort_reader(self, tokenizer, input_names: list[str]):
        from onnxruntime.quantization import CalibrationDataReader

        source = self

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = source.batches(tokenizer, input_names)

            def get_next(self):
                return next(self._it, None)

            def rewind(self):
                self._it = source.batches(tokenizer, input_names)

        return Reader()

    def nncf_dataset(self, tokenizer, input_names: list[str]):
        import nncf

        return nncf.Dataset(list(self.batches(tokenizer, input_names)))
