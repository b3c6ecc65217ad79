from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator

import numpy as np

from ..errors import ConfigError, InputError
from ..textdata import BUILTIN, iter_texts, sample

Progress = Callable[[str], None]
# The ORT calibrators keep every batch's intermediate tensors until the reader is exhausted (gigabytes for 512
# samples of 128 tokens); fed this many batches at a time, they fold each chunk into running ranges or histograms.
CHUNK_BATCHES = 4


@dataclass(frozen=True)
class CalibrationSource:
    """Real text that becomes calibration batches. `spec` is `builtin`, a text/TSV/CSV/JSONL/Parquet file,
    `FILE:COLUMN`, or `hf:NAME[:CONFIG][:SPLIT][:COLUMN]` (a Hugging Face dataset, streamed)."""
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

    @cached_property
    def _texts(self) -> list[str]:
        # Read once per source: a streamed hub dataset or a large file is not re-read for every pass.
        texts = sample(iter_texts(self.spec), self.samples, self.seed)
        if not texts:
            raise InputError(f"calibration source {self.spec} is empty")
        return texts

    def texts(self) -> list[str]:
        return list(self._texts)

    def batch_count(self) -> int:
        """How many batches `batches()` yields (NNCF's subset_size counts dataset items, which are batches here)."""
        return -(-len(self._texts) // self.batch_size)

    def batches(self, tokenizer, input_names: list[str], rate: "Rate | None" = None,
                start: int = 0, stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Tokenized batches `start` to `stop`, by default padded to the longest sample of each batch (as real
        traffic is). Tokenized one at a time: only the texts are held, never all the tensors."""
        texts = self._texts
        padding = True if self.padding == "longest" else "max_length"
        stop = self.batch_count() if stop is None else stop
        for index in range(start, stop):
            chunk = texts[index * self.batch_size:(index + 1) * self.batch_size]
            encoded = tokenizer(chunk, padding=padding, truncation=True, max_length=self.max_length,
                                return_tensors="np")
            # Token ids as int64; float inputs (a decoder's empty KV cache, see runtimes/decoding.py) as they are.
            yield {name: encoded[name] if encoded[name].dtype.kind == "f" else encoded[name].astype(np.int64)
                   for name in input_names}
            if rate is not None:
                rate.advance(len(chunk))

    def rate(self, callback: Progress | None, label: str = "calibration") -> "Rate":
        return Rate(callback or (lambda message: None), label, len(self._texts))

    def ort_reader(self, tokenizer, input_names: list[str], progress: Progress | None = None):
        """A CalibrationDataReader that also supports ORT's strided calibration (`__len__`, `set_range`)."""
        from onnxruntime.quantization import CalibrationDataReader

        source, rate = self, self.rate(progress)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.set_range(0, len(self))

            def __len__(self):
                return source.batch_count()

            def set_range(self, start_index: int, end_index: int):
                self._it = source.batches(tokenizer, input_names, rate, start_index, end_index)

            def get_next(self):
                return next(self._it, None)

            def rewind(self):
                self.set_range(0, len(self))

        return Reader()

    def nncf_dataset(self, tokenizer, input_names: list[str], progress: Progress | None = None):
        import nncf

        source, rate = self, self.rate(progress)

        class Batches:
            """Re-iterable and sized, tokenized lazily (NNCF walks the data once per statistics pass)."""

            def __iter__(self):
                return source.batches(tokenizer, input_names, rate)

            def __len__(self):
                return source.batch_count()

        return nncf.Dataset(Batches())


def strided_chunk(batches: int) -> int:
    """The largest chunk of at most CHUNK_BATCHES batches that divides the batch count (ORT requires it)."""
    return max(k for k in range(1, CHUNK_BATCHES + 1) if batches % k == 0)


class Rate:
    """Reports samples done and samples/s through a progress callback, at most every `every_s` seconds."""

    def __init__(self, callback: Progress, label: str, total: int, every_s: float = 2.0):
        self.callback, self.label, self.total, self.every_s = callback, label, total, every_s
        self.done, self.started, self.last = 0, None, 0.0

    def advance(self, count: int) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = self.last = now
        self.done += count
        if now - self.last >= self.every_s or self.done % self.total == 0:
            self.last = now
            elapsed = max(now - self.started, 1e-9)
            self.callback(f"{self.label}: {self.done} samples ({self.done / elapsed:.1f} samples/s)")
