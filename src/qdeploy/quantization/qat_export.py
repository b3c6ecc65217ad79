"""Exporting the fake-quantized PyTorch model of quantization-aware training (qat.py) and checking the graph.

ONNX: NNCF's quantizers traced as QuantizeLinear/DequantizeLinear pairs, then the weights stored as int8. OpenVINO:
traced as FakeQuantize, which OpenVINO runs in int8. Both are checked against the PyTorch model they came from: the
quantizers must see the same tensors when traced as when run, and the outputs must agree within the model's own
noise floor.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import numpy as np

from ..artifact import Artifact, Manifest
from ..errors import ExportValidationError
from ..exporters import FORMATS

# Two int8 implementations of one network never agree exactly (see _noise_floor). Measured against the floor on
# MiniLM: ONNX Runtime about 1.2x it, OpenVINO up to 3.2x (its int8 kernels round in other places) with every
# operator quantized; a misplaced or mis-scaled quantizer is off by more than that.
FLOOR_FACTOR, MIN_TOLERANCE = 4.0, 0.03


def quantizers(model):
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer

    return [(decode_hook_name(name), module) for name, module in get_hook_storage(model).named_hooks()
            if isinstance(module, BaseQuantizer)]


def _wrapper(model, input_names, output_names, positions: bool):
    """Positional inputs, the task's outputs as a tuple: what the exporters trace.

    `positions`: position ids passed in. Under tracing, sizes are tensors, so a model that derives its position ids
    from the sequence length (BERT: `seq_length + past_length`) runs one more `add` than in eager mode; NNCF names
    its hooks by call order, and every later quantizer of that kind would land on the wrong tensor."""
    import torch

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            kwargs = dict(zip(input_names, args))
            if positions:
                kwargs["position_ids"] = torch.arange(args[0].shape[1]).unsqueeze(0)
            out = self.model(**kwargs)
            return tuple(out[name] for name in output_names)

    return Traced().eval()


def _plain_positions(teacher, batch) -> bool:
    """Whether the model takes position_ids and 0..n-1 gives exactly its own outputs (BERT-style absolute
    positions; RoBERTa's offset positions do not pass)."""
    import inspect

    import torch

    if "position_ids" not in inspect.signature(teacher.forward).parameters:
        return False
    inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        own = teacher(**inputs)
        given = teacher(**inputs, position_ids=torch.arange(batch["input_ids"].shape[1]).unsqueeze(0))
    return all(torch.equal(own[k], given[k]) for k in own.keys() if torch.is_tensor(own[k]))


@contextlib.contextmanager
def _quantizer_inputs(student, log: list):
    """Record what each quantizer sees (name, shape, dtype): eager and traced runs must match."""
    handles = [module.register_forward_pre_hook(
        lambda mod, args, name=name: log.append((name, tuple(args[0].shape), str(args[0].dtype))))
        for name, module in quantizers(student)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def export(student, teacher, fmt: str, batches, input_names, output_names, target: Path, opset: int) -> str:
    import torch
    from nncf.torch.quantization.layers import QuantizerExportMode

    example = tuple(torch.from_numpy(v) for v in batches[0].values())
    wrapped = _wrapper(student, input_names, output_names, _plain_positions(teacher, batches[0]))
    mode = QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS if fmt == "onnx" else \
        QuantizerExportMode.FAKE_QUANTIZE
    for _, module in quantizers(student):
        module.set_export_mode(mode)
    eager, traced = [], []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _quantizer_inputs(student, eager):
            wrapped(*example)
        with _quantizer_inputs(student, traced):
            model_file, _ = FORMATS.get(fmt).write(wrapped, example, input_names, output_names, target, opset)
    moved = [e[0] for e, t in zip(eager, traced) if e != t]
    if len(eager) != len(traced[:len(eager)]) or moved:
        raise ExportValidationError(f"{fmt} export of the QAT model: quantizers see other tensors when traced than "
                                    f"when run ({moved[0] if moved else 'count differs'}); the graph is not faithful")
    if fmt == "onnx":
        _fold_weights(target / model_file)
    return model_file


def _fold_weights(path: Path) -> None:
    """Quantized weights stored as int8 initializers read by DequantizeLinear (as ONNX Runtime's QDQ quantizer
    writes them): a quarter of the bytes, and a Linear weight's Transpose folded in so that DequantizeLinear feeds
    MatMul directly, the pattern ONNX Runtime fuses into an int8 MatMul."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    tensors.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                    if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    # Weights are initializers, or Constant nodes where the exporter folded NNCF's clamp of half-range weights.
    float_weights = {name for name, value in tensors.items() if value.dtype.kind == "f" and value.ndim >= 2}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    dropped, added = [], []
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in float_weights]:
        weight, scale, zero = (tensors.get(name) for name in q.input[:3])
        dequantizers = users.get(q.output[0], [])
        if scale is None or zero is None or len(users[q.input[0]]) != 1 or len(dequantizers) != 1:
            continue
        dq = dequantizers[0]
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[axis] = -1
        limits = np.iinfo(zero.dtype)
        quantized = np.clip(np.rint(weight / scale.reshape(shape)) + zero.reshape(shape).astype(np.int32),
                            limits.min, limits.max).astype(zero.dtype)
        after = users.get(dq.output[0], [])
        perm = [list(a.ints) for a in after[0].attribute if a.name == "perm"] if len(after) == 1 else []
        if weight.ndim == 2 and after[0].op_type == "Transpose" and perm == [[1, 0]]:
            quantized = quantized.T
            for attribute in dq.attribute:
                if attribute.name == "axis" and scale.ndim:
                    attribute.i = 1 - axis
            dq.output[0] = after[0].output[0]
            dropped.append(after[0])
        added.append(numpy_helper.from_array(np.ascontiguousarray(quantized), q.input[0] + "_quantized"))
        dq.input[0] = added[-1].name
        dropped.append(q)
    for node in dropped:
        graph.node.remove(node)
    still_used = {name for node in graph.node for name in node.input}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in still_used]:
        graph.node.remove(node)
    kept = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    onnx.save(model, str(path))


def _relative_error(outputs: list[dict], references: list[dict]) -> float:
    """Relative L2 error over every batch and output (all pooled: one short batch does not decide alone)."""
    error = sum(float(np.sum((o[k] - r[k]) ** 2)) for o, r in zip(outputs, references) for k in r)
    return math.sqrt(error / max(sum(float(np.sum(r[k] ** 2)) for r in references for k in r), 1e-24))


def _torch_outputs(model, batches, output_names) -> list[dict]:
    import torch

    with torch.no_grad():
        results = [model(**{k: torch.from_numpy(v) for k, v in batch.items()}) for batch in batches]
    return [{name: out[name].float().numpy() for name in output_names} for out in results]


def _noise_floor(student, batches, output_names) -> float:
    """How far the fake-quantized model moves from itself when every quantized activation moves by about one part
    in a million, as float sums taken in another order move them: the disagreement any second int8 implementation
    shows, since a value nudged across a quantization boundary gains a whole step, which travels on. Quantizing
    every operator (w8a8-all) makes it large (about 0.17 on MiniLM), the transformer scheme small (about 0.005)."""
    import torch

    generator = torch.Generator().manual_seed(0)

    def nudge(module, args):
        x = args[0]
        if isinstance(x, torch.nn.Parameter) or not x.is_floating_point():
            return None  # weights are the same numbers in every implementation
        return (x * (1 + 1e-6 * torch.randn(x.shape, generator=generator)),)

    handles = [module.register_forward_pre_hook(nudge) for _, module in quantizers(student)]
    try:
        nudged = _torch_outputs(student, batches, output_names)
    finally:
        for handle in handles:
            handle.remove()
    return _relative_error(nudged, _torch_outputs(student, batches, output_names))


def validate(parent: Artifact, target: Path, model_file: str, fmt: str, runtime: str, runtime_config: dict,
              student, batches, output_names) -> dict:
    """The exported graph against the fake-quantized PyTorch model on real held-out sentences; a misplaced or
    mis-scaled quantizer is off by more than the model's own noise floor allows (FLOOR_FACTOR times it). Returns
    what was checked (`validation_note` says it in words)."""
    from .. import runtimes

    manifest = Manifest(format=fmt, model_file=model_file, precision="int8", task=parent.manifest.task,
                        source=parent.manifest.source, runtime_config=runtime_config,
                        inputs=list(parent.manifest.inputs), outputs=output_names)
    session = runtimes.load(Artifact(target, manifest), runtime)
    references = _torch_outputs(student, batches, output_names)
    outputs = [session.run(batch) for batch in batches]
    for out, ref in zip(outputs, references):
        for name in output_names:
            if out[name].shape != ref[name].shape or not np.isfinite(out[name]).all():
                raise ExportValidationError(f"{fmt} export of the QAT model: output {name} has shape "
                                            f"{out[name].shape} or non-finite values; PyTorch gives {ref[name].shape}")
    error, floor = _relative_error(outputs, references), _noise_floor(student, batches, output_names)
    limit = FLOOR_FACTOR * floor + MIN_TOLERANCE
    if error > limit:
        raise ExportValidationError(f"{fmt} export of the QAT model failed validation on {runtime}: relative error "
                                    f"{error:.3g} against the fake-quantized PyTorch model, limit {limit:.3g} (its "
                                    f"own noise floor {floor:.3g}); the graph is not faithful")
    sentences = sum(len(next(iter(batch.values()))) for batch in batches)
    return {"runtime": runtime, "sentences": sentences, "relative_error": float(error), "limit": float(limit),
            "noise_floor": float(floor)}


def validation_note(check: dict) -> str:
    return (f"validated on {check['runtime']} against the fake-quantized PyTorch model on {check['sentences']} "
            f"sentences: relative error {check['relative_error']:.4f}, limit {check['limit']:.4f} ({FLOOR_FACTOR:g}x "
            f"its noise floor {check['noise_floor']:.4f} + {MIN_TOLERANCE})")
