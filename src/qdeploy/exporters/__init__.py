"""PyTorch model -> ONNX or OpenVINO IR artifact, always validated against PyTorch on real inputs.

A format is one module that registers a `Format` (how to write the graph, which runtime validates it); this file holds
what every format shares: loading, real example inputs, the reference outputs, staging and the validation gate.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import runtimes
from ..artifact import Artifact, Manifest, copy_tokenizer, finalize, staging
from ..errors import ExportError, ExportValidationError, InputError, QdeployError, UnsupportedError, disk_full
from ..machine import build_record, describe
from ..models import ModelSource
from ..registry import Registry
from ..tasks import Architecture, architecture, check_task, load_model, model_inputs, task
from ..textdata import builtin_path

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Format:
    name: str
    validator_runtime: str
    # (wrapped torch module, example inputs as a tuple of tensors, input names, output names, target dir, arch)
    #   -> (model file name relative to the dir, runtime_config)
    write: Callable[..., tuple[str, dict[str, Any]]]
    doing: str  # the step, as a failure names it ("exporting to onnx")


FORMATS: Registry[Format] = Registry("format", ("qdeploy.exporters.onnx_format", "qdeploy.exporters.openvino_format"))


def reason(exc: BaseException) -> str:
    """The library's own words in one line: the root cause's first line (exporters wrap the failing operator's error
    in a generic "failed to export"), OpenVINO's list of operations it could not convert, and where in the model's
    code torch.export stopped."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    unconverted = [line[3:] for line in lines if line.startswith("-- ")]
    first = " ".join((unconverted or lines or [type(exc).__name__])[0].split())
    where = re.search(r'following call raised this error:\s*File "[^"]*?([^/"]+)", line (\d+), in \S+\s*\n\s*(.+)',
                      text)
    if where:
        first += f" (at {where[1]}:{where[2]}: {where[3].strip()})"
    return first if len(first) <= 300 else first[:297] + "..."


@contextmanager
def step(model_type: str, doing: str):
    """A library's failure while `doing` becomes one line naming the architecture, the step and the library's reason:
    for an architecture that is tried rather than listed, a failure is an answer, not a crash."""
    try:
        yield
    except QdeployError:
        raise
    except Exception as exc:
        if disk_full(exc) or isinstance(exc, MemoryError):
            raise
        if _interrupted(exc):  # a converter that caught Ctrl-C and raised its own error: still an interrupt
            raise KeyboardInterrupt from exc
        raise ExportError(f"architecture {model_type!r}: {doing} failed: {reason(exc)}") from exc


def _interrupted(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def tokenizer_for(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:  # many decoders' tokenizers have none, and validation pads a batch
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def validation_batches(tokenizer, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Real held-out sentences: a padded batch of three (dynamic batch and padding) and one long sentence alone."""
    lines = builtin_path("heldout.txt").read_text(encoding="utf-8").splitlines()
    longest = max(lines, key=len)
    batches = []
    for texts in (lines[:3], [longest + " " + lines[3]]):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
        batches.append({name: enc[name].astype(np.int64) for name in input_names})
    return batches


class _Wrapper:
    """Positional inputs in the architecture's order, the task's outputs as a tuple: what exporters trace."""

    @staticmethod
    def build(model, input_names: tuple[str, ...], output_names: tuple[str, ...]):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *args):
                out = self.model(**dict(zip(input_names, args)))
                return tuple(out[name] for name in output_names)

        return Wrapped().eval()


def reference_outputs(model, batches: list[dict[str, np.ndarray]], output_names) -> list[dict[str, np.ndarray]]:
    import torch

    refs = []
    with torch.inference_mode():
        for batch in batches:
            out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
            refs.append({name: out[name].float().numpy().copy() for name in output_names})
    return refs


def compare(artifact: Artifact, runtime: str, batches, references, atol: float, rtol: float = 1e-3) -> dict[str, Any]:
    model_type = artifact.manifest.source.get("model_type", "?")
    with step(model_type, f"loading in {runtime}"):
        session = runtimes.load(artifact, runtime)
    worst = 0.0
    for batch, ref in zip(batches, references):
        with step(model_type, f"validating on {runtime}"):
            got = session.run(batch)
        for name, expected in ref.items():
            actual = got[name]
            if actual.shape != expected.shape:
                raise ExportValidationError(
                    f"architecture {model_type!r}: {artifact.format} export: output {name} has shape {actual.shape}, "
                    f"PyTorch gives {expected.shape}")
            excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
            diff = float(np.abs(actual - expected).max())
            worst = max(worst, diff)
            if (excess > 0).any() or not np.isfinite(actual).all():
                raise ExportValidationError(
                    f"architecture {model_type!r}: {artifact.format} export failed validation on {runtime}: output "
                    f"{name} differs from PyTorch by up to {diff:.3g} (tolerance {atol:g} + {rtol:g}*|x|); "
                    "the graph is not faithful")
    return {"runtime": runtime, "max_abs_diff": worst, "atol": atol, "rtol": rtol,
            "batches": [list(next(iter(b.values())).shape) for b in batches]}


def validate(artifact: Artifact, model_dir: Path | None = None, atol: float | None = None) -> dict[str, Any]:
    """Re-check an existing artifact against its PyTorch source (raises ExportValidationError)."""
    source_dir = Path(model_dir or artifact.manifest.source["path"])
    if task(artifact.manifest.task).exporter:
        raise UnsupportedError("re-validating a generative artifact is not supported yet; export it again instead")
    model = load_model(source_dir, artifact.manifest.task, pickle=bool(artifact.manifest.source.get("pickle")))
    arch = architecture(model.config.model_type, artifact.manifest.task)
    batches = validation_batches(tokenizer_for(source_dir), list(artifact.manifest.inputs))
    refs = reference_outputs(model, batches, artifact.manifest.outputs)
    fmt = FORMATS.get(artifact.format)
    return compare(artifact, fmt.validator_runtime, batches, refs, atol if atol is not None else arch.atol)


def export(source: ModelSource, task_name: str, fmt_name: str, out: Path, *, atol: float | None = None,
           opset: int | None = None, trust_remote_code: bool = False, overwrite: bool = False,
           progress: Progress | None = None, stateful: bool = True) -> Artifact:
    """`stateful` applies to text-generation exported to OpenVINO (KV cache kept as OpenVINO state)."""
    say = progress or (lambda message: None)
    if Path(out).exists() and not overwrite:  # before the model is loaded: a mistake answers at once
        raise InputError(f"{out} already exists; choose another --out or remove it")
    fmt = FORMATS.get(fmt_name)
    the_task = task(task_name)
    arch: Architecture = architecture(source.model_type, task_name)
    check_task(arch, task_name)
    if the_task.exporter:
        # Tasks with a cache (causal LMs, seq2seq) have an exporter module of their own, named by the task.
        from importlib import import_module

        own = import_module(f"{__name__}.{the_task.exporter}")
        return own.export(source, task_name, fmt_name, out, atol=atol, opset=opset,
                          trust_remote_code=trust_remote_code, overwrite=overwrite, progress=progress,
                          stateful=stateful)
    say(f"loading {source.spec}")
    model = load_model(source.path, task_name, trust_remote_code, pickle=source.pickle)
    tokenizer = tokenizer_for(source.path)
    input_names = model_inputs(arch, tokenizer, model)
    batches = validation_batches(tokenizer, input_names)
    # References first: tracing for export can leave the module in a state whose eager outputs differ.
    with step(source.model_type, "running in pytorch"):
        references = reference_outputs(model, batches, the_task.outputs)
    example = tuple(__import__("torch").from_numpy(v) for v in batches[0].values())
    wrapped = _Wrapper.build(model, tuple(input_names), the_task.outputs)
    with staging(Path(out), overwrite=overwrite) as tmp:
        say(f"exporting to {fmt_name}")
        with step(source.model_type, fmt.doing):
            model_file, runtime_config = fmt.write(wrapped, example, input_names, list(the_task.outputs), tmp,
                                                   opset or arch.opset)
        copy_tokenizer(source.path, tmp)
        manifest = Manifest(
            format=fmt_name, model_file=model_file, precision="fp32", task=task_name, source=source.describe(),
            runtime_config=runtime_config, inputs=input_names, outputs=list(the_task.outputs),
            libraries=describe()["libraries"], built_on=build_record(),
        )
        finalize(tmp, manifest)
        say(f"validating {fmt_name} against PyTorch")
        manifest.validation = compare(Artifact(tmp, manifest), fmt.validator_runtime, batches, references,
                                      atol if atol is not None else arch.atol)
        finalize(tmp, manifest)
    return Artifact.load(out)
