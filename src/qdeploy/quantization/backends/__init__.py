"""The per-format half of every quantization algorithm, as NNCF splits min_max/algorithm.py from its backend.py.

An algorithm in ../algorithms is written once against `GraphBackend`; onnx.py (ONNX Runtime) and openvino.py (NNCF
on OpenVINO) supply it, registered by format name and chosen by the parent artifact's format (`backend_for`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, Protocol

import numpy as np

from ...errors import ConfigError, QdeployError
from ...registry import Registry

INT8_TYPES = Literal["qint8", "quint8"]


@dataclass
class Linear:
    name: str  # the node's name: what the quantizer's ignore lists take
    activation: str  # the tensor it reads; layers reading the same one form a SmoothQuant group
    weight: np.ndarray  # [in, out]


class LinearGraph:
    """A float graph seen as its Linear layers: what SmoothQuant and the outlier recipe read and change."""

    def linears(self) -> list[Linear]:
        raise NotImplementedError

    def activations(self, names: list[str], batches) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError

    def smooth(self, scales: dict[str, np.ndarray]) -> None:
        """Divide each activation by its per-channel scale and multiply the weights reading it by the same."""
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError

    def groups(self) -> dict[str, list[Linear]]:
        found: dict[str, list[Linear]] = defaultdict(list)
        for layer in self.linears():
            found[layer.activation].append(layer)
        if not found:
            raise QdeployError("no Linear layer (MatMul with a constant 2-D weight) found; nothing to quantize")
        return dict(found)


def within(start, step, hops: int = 4) -> list:
    """Every node up to `hops` steps from `start` (step: a node -> its neighbours one way): how both backends find the
    feed-forward layers around an activation function."""
    frontier, seen = [start], []
    for _ in range(hops):
        frontier = [n for node in frontier for n in step(node)]
        seen += frontier
    return seen


@dataclass(frozen=True)
class Int8Settings:
    """The static int8 step that ends SmoothQuant and the outlier recipe. Each setting belongs to one backend
    (FORMAT_OPTIONS): none means that backend's default, and setting one the parent's backend does not have is a
    ConfigError (`check_options`), so a plan never runs with an option silently ignored."""
    FORMAT_OPTIONS: ClassVar[dict[str, str]] = {"per_channel": "onnx", "reduce_range": "onnx",
                                                "activation_type": "onnx", "preset": "openvino"}
    # ONNX Runtime: per-channel weight scales (none: true)
    per_channel: bool | None = None
    # ONNX Runtime: 7-bit weights (none: decided by the CPU, true without VNNI)
    reduce_range: bool | None = None
    # ONNX Runtime: activation type (none: qint8 with VNNI, quint8 without)
    activation_type: INT8_TYPES | None = None
    # NNCF on OpenVINO: quantization preset (none: mixed)
    preset: Literal["performance", "mixed"] | None = None


class GraphBackend(Protocol):
    format: str
    model_file: str  # the graph's file name in a quantized artifact of this format
    runtime: str  # the runtime that scores a candidate of this format (accuracy-aware methods)

    def runtime_config(self) -> dict[str, Any]:
        """The format's default runtime settings for a quantized artifact (a fresh copy)."""

    def load_settings(self, model_path: Path, runtime_config: dict[str, Any]) -> dict[str, Any]:
        """`runtime_config` with what the written graph needs to load (a runtime's workaround), else unchanged."""

    def read(self, model_path: Path) -> LinearGraph:
        """The float graph at `model_path`, to list, measure, change and save its Linear layers."""

    def ffn_layers(self, model_path: Path, down_only: bool = False) -> set[str]:
        """The feed-forward Linear layers (next to the activation function), or only those reading its output."""

    def head_layers(self, model_path: Path) -> set[str]:
        """The Linear layers that produce a model output: a language model's lm_head."""

    def int8(self, model_path: Path, kept_float: list[str], target: Path, calibration, ctx, parent,
             settings: Int8Settings) -> None:
        """Static int8 of every Linear layer of `model_path` but `kept_float`, written to target/model_file."""

    def dynamic_int8(self, model_path: Path, kept_float: list[str], target: Path, settings: Int8Settings) -> None:
        """Dynamic int8 (activation ranges found per batch at run time) of every Linear layer but `kept_float`.
        Only a runtime with dynamic int8 kernels has it (ONNX Runtime): configs name it ONNX-only in FORMAT_OPTIONS,
        so another backend is never asked."""

    def fp8(self, model_path: Path, fp8_format: str, kept_float: list[str], target: Path, calibration, ctx,
            parent) -> list[str]:
        """fp8 activations (emulated where the CPU has none), written to target/model_file; returns the notes."""

    def weight_int4(self, model_path: Path, config, target: Path, calibration, ctx, parent,
                    exclude: list[str] = ()) -> list[str]:
        """4-bit weight-only compression of every Linear layer but `exclude` (kept float), written to
        target/model_file; returns the notes."""

    def weight_int8(self, model_path: Path, config, target: Path) -> list[str]:
        """int8 weights, activations in float, written to target/model_file; returns the notes."""


BACKENDS: Registry[GraphBackend] = Registry("backend", ("qdeploy.quantization.backends.onnx",
                                                        "qdeploy.quantization.backends.openvino"))


def backend(fmt: str) -> GraphBackend:
    return BACKENDS.get(fmt)


def backend_for(artifact) -> GraphBackend:
    """The backend of an artifact's format, as NNCF picks its backend from the model it is given."""
    return backend(artifact.format)


def check_options(config: Any, fmt: str) -> None:
    """Refuse the options of another backend that `config` sets: they would be silently ignored on this one.

    A config names its backend-specific options in a FORMAT_OPTIONS class variable (option -> format); their default
    is None, the owning backend's own default. A config's `check_format(fmt)`, if any, checks the rest."""
    owned = getattr(config, "FORMAT_OPTIONS", {})
    foreign = [name for name, owner in owned.items() if owner != fmt and getattr(config, name) is not None]
    if foreign:
        own = [name for name, owner in owned.items() if owner == fmt]
        raise ConfigError(f"{', '.join(foreign)}: not a setting of the {fmt} backend"
                          + (f" (its own: {', '.join(own)})" if own else ""))
    if hasattr(config, "check_format"):  # a limit of one backend (ONNX Runtime's block sizes)
        config.check_format(fmt)
