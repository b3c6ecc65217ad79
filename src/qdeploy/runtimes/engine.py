"""What the language-model engines' runtimes (`ort-genai`, `openvino-genai`) share: how each says whether it can run
here and an artifact, and how rows of generated tokens of different lengths come back as one array."""
from __future__ import annotations

from importlib.util import find_spec
from typing import Callable

import numpy as np

from ..artifact import DECODER, Artifact
from ..errors import UnsupportedError


class EngineRuntime:
    """A runtime that is an engine: it runs its own generation loop, decoder artifacts only, and needs a file the
    exporter writes beside the graph (`needs`)."""
    kinds = (DECODER,)

    def __init__(self, name: str, fmt: str, module: str, package: str, needs: str, remedy: str,
                 make: Callable[[Artifact, int | None], object]):
        self.name, self.formats, self._module, self._package = name, (fmt,), module, package
        self._needs, self._remedy, self._make = needs, remedy, make

    def unavailable_reason(self) -> str | None:
        # Found, not imported: `qdeploy list` and the plan check stay fast.
        return None if find_spec(self._module) else f"{self._package} is not installed"

    def supports(self, artifact: Artifact) -> bool:
        return (artifact.format in self.formats and artifact.manifest.kind in self.kinds
                and self._needs in artifact.manifest.files)

    def load(self, artifact: Artifact, threads: int | None = None):
        if self._needs not in artifact.manifest.files:
            raise UnsupportedError(f"{artifact.directory} has no {self._needs}: {self._remedy}")
        return self._make(artifact, threads)


def pad_rows(rows: list, pad: int) -> np.ndarray:
    """Token rows of different lengths (a row that ended early) as one array, padded on the right."""
    out = np.full((len(rows), max(map(len, rows))), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def greedy_request(engine: str, input_ids, attention_mask, do_sample: bool, eos_token_id, default_eos):
    """(ids, mask, whether the end token is ignored) of a generate() call that an engine runs greedily."""
    if do_sample:
        raise UnsupportedError(f"qdeploy drives {engine} greedily; sampling is the engine's own option")
    ids = np.asarray(input_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    return ids, mask, (default_eos if eos_token_id == -1 else eos_token_id) is None
