"""One verb, `quantize(artifact, config)`, and one registered function per config type (as in torchao).

A method module defines a frozen config dataclass and a function `(parent, config, calibration, target_dir, ctx)
-> MethodResult`; this file does everything every method shares: checks, staging, the tokenizer, the manifest and its
hashes. An algorithm written once for every format lives in algorithms/ and speaks to a backend (backends/); it is
registered for the formats it accepts, and an alias (an old name such as nncf-smoothquant) is a config subclass with
its own defaults, registered for one format.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..artifact import DECODER, SEQ2SEQ, Artifact, Manifest, copy_tokenizer, finalize, staging
from ..engine_files import GENAI_CONFIG, write_genai_config
from ..benchmarking.memory import RssSampler
from ..calibration import CalibrationSource
from ..config import build, to_dict
from ..errors import ConfigError, UnsupportedError
from ..machine import build_record, describe
from ..registry import Registry

Progress = Callable[[str], None]


@dataclass(frozen=True)
class MethodResult:
    model_file: str  # relative to the artifact's directory
    precision: str
    runtime_config: dict[str, Any]
    notes: list[str]
    # Why each layer a method kept float was kept float, by graph node name: the layer plan's `why` for those layers
    # (the plan itself is read from the written graph, so it cannot say what was never done).
    float_reasons: dict[str, str] = field(default_factory=dict)
    transforms: tuple[str, ...] = ()  # graph-wide changes the graph does not show plainly (SmoothQuant's scales)
    # What the method found, for scripts and tests (a search's candidates, a fine-tune's losses): the manifest's
    # method["result"]; the notes say the same for people and are rendered from it, never parsed.
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    config: type
    formats: tuple[str, ...]  # the parent formats it accepts; a run quantizes the first (input_format)
    apply: Callable[..., MethodResult]
    needs_calibration: bool = False
    description: str = ""

    @property
    def input_format(self) -> str:
        """The format a run picks this method's parent by: one name, one format (nncf-* names pick OpenVINO)."""
        return self.formats[0]


def _algorithm_modules() -> tuple[str, ...]:
    """Every module in algorithms/: a new algorithm is one file there, found without a list to update (the names
    only, read from the directory: nothing is imported until a method is looked up)."""
    import pkgutil

    found = pkgutil.iter_modules([str(Path(__file__).parent / "algorithms")])
    return tuple(f"{__name__}.algorithms.{module.name}" for module in sorted(found, key=lambda m: m.name))


# Methods of one format only, then the algorithms written for both.
METHODS: Registry[Method] = Registry("method", tuple(f"{__name__}.{m}" for m in (
    "fp16", "nncf_methods", "ort_methods", "precision", "qat")) + _algorithm_modules())
_BY_CONFIG: dict[type, Method] = {}


def register(name: str, config: type, formats: str | tuple[str, ...], needs_calibration: bool = False,
             description: str = ""):
    def add(fn):
        method = Method(name, config, (formats,) if isinstance(formats, str) else tuple(formats), fn,
                        needs_calibration, description)
        METHODS.register(name)(method)
        _BY_CONFIG[config] = method
        return fn

    return add


def method(name: str) -> Method:
    return METHODS.get(name)


def names() -> list[str]:
    return METHODS.names()


def make_config(name: str, options: dict[str, Any] | None = None, fmt: str | None = None):
    """The checked config of method `name` for parents of format `fmt` (None: the method's first): its own checks
    run in the config's __post_init__, and an option of another backend fails here, before any export."""
    from .backends import check_options

    the_method = method(name)
    fmt = fmt or the_method.input_format
    if fmt not in the_method.formats:
        raise ConfigError(f"method {name} works on {' or '.join(the_method.formats)} artifacts, not {fmt}")
    config = build(the_method.config, options, f"method {name}")
    check_options(config, fmt)
    return config


@dataclass
class Context:
    """What a method may use besides its config: the tokenizer (for calibration) and a progress callback."""
    tokenizer: Any
    progress: Progress
    # How independent trials run: one after another, or (given by the executor) as parallel tasks on this node.
    parallel_map: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None

    @property
    def parallel(self) -> bool:
        return self.parallel_map is not None

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if self.parallel_map is not None and len(items) > 1:
            return self.parallel_map(fn, items)
        return [fn(item) for item in items]


def quantize(parent: Artifact, config: Any, out: Path, calibration: CalibrationSource | None = None,
             progress: Progress | None = None, overwrite: bool = False,
             parallel_map: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None) -> Artifact:
    METHODS.load()  # registers every config type
    the_method = _BY_CONFIG.get(type(config))
    if the_method is None:
        raise UnsupportedError(f"no method registered for config {type(config).__name__}")
    if parent.format not in the_method.formats:
        wanted = " or ".join(the_method.formats)
        article = "an" if wanted[0] in "aeiou" else "a"
        raise UnsupportedError(f"method {the_method.name} needs {article} {wanted} artifact, "
                               f"{parent.directory} is {parent.format}")
    from .backends import check_options

    check_options(config, parent.format)
    if parent.precision != "fp32":
        raise UnsupportedError(f"method {the_method.name} starts from an fp32 artifact; {parent.directory} is "
                               f"{parent.precision}")
    calibration = calibration or CalibrationSource()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(parent.directory))
    kind = parent.manifest.kind
    if kind == SEQ2SEQ and the_method.needs_calibration:
        raise UnsupportedError(f"method {the_method.name} calibrates on tokenized text, which a seq2seq decoder "
                               "(fed encoder states and a cache) does not take; use a dynamic or weight-only method")
    if kind == DECODER:
        from ..runtimes.decoding import DecoderFeeds
        from ..tasks import for_generation

        tokenizer = DecoderFeeds(for_generation(tokenizer), parent)
    ctx = Context(tokenizer, progress or (lambda message: None), parallel_map)
    with staging(Path(out), overwrite=overwrite) as tmp:
        # Peak memory over what the process held before (calibration included): recorded, so a source or a method
        # that grows with the number of samples shows up in the manifest rather than as a killed process.
        with RssSampler() as memory:
            result: MethodResult = the_method.apply(parent, config, calibration, tmp, ctx)
        runtime_config, notes = result.runtime_config, list(result.notes)
        from .backends import BACKENDS

        if parent.format in BACKENDS:  # e.g. an ONNX Runtime optimizer the written graph cannot load with
            runtime_config = BACKENDS.get(parent.format).load_settings(tmp / result.model_file, runtime_config)
        if kind == DECODER and parent.format == "onnx":
            from .backends.onnx_fusion import fuse_file

            fused = fuse_file(tmp / result.model_file)
            if fused:
                notes.append(f"{fused} MatMulNBits reading one activation (query/key/value, gate/up) fused in "
                             "groups: one kernel each, as ONNX Runtime GenAI's builder lays them out")
            # weight-only graphs, unless asked not to; the calibrated ones keep the layout their methods read
            if result.precision.endswith("-weights") and getattr(config, "genai_form", None) is not False:
                from .backends.onnx_genai_form import max_positions_of, to_genai_form_file

                rewritten = to_genai_form_file(tmp / result.model_file, max_positions_of(parent.directory), whole=True)
                if rewritten:
                    notes.append(f"{rewritten} attention blocks, attention inputs and residual norms rewritten in "
                                 "ONNX Runtime GenAI's form (GroupQueryAttention with rotary caches, "
                                 "SkipSimplifiedLayerNormalization)")
        if kind == DECODER:
            # How the KV cache is carried does not change with the weights' precision.
            runtime_config = {**runtime_config, "decoder": parent.manifest.runtime_config["decoder"]}
        if kind == SEQ2SEQ:
            # The method quantized the decoder (the model file, run once per token); the encoder is kept as it was.
            from ..runtimes.seq2seq_decoding import copy_encoder

            runtime_config = {**runtime_config, "seq2seq": copy_encoder(parent, tmp)}
            notes = [*notes, "decoder quantized; encoder kept fp32"]
        copy_tokenizer(parent.directory, tmp)
        if kind == DECODER and parent.format == "onnx" and (parent.directory / GENAI_CONFIG).is_file():
            # The engine's config names this artifact's graph, which may not be the parent's file.
            import onnx

            from .backends.onnx_genai_form import uses_group_query_attention

            graph = onnx.load(str(tmp / result.model_file), load_external_data=False)
            why_not = write_genai_config(tmp, result.model_file, list(parent.manifest.inputs),
                                         runtime_config["decoder"], share_buffer=uses_group_query_attention(graph))
            notes += [f"onnxruntime-genai cannot load it: {why_not}"] if why_not else []
        plan = _layer_plan(parent, the_method.name, tmp, result)
        method_record = {"name": the_method.name, "config": to_dict(config), "peak_rss_delta_mb": memory.delta_mb}
        if the_method.needs_calibration:
            method_record["calibration"] = to_dict(calibration)
        if result.record:
            method_record["result"] = result.record
        manifest = Manifest(
            format=parent.format, model_file=result.model_file, precision=result.precision, task=parent.manifest.task,
            source=parent.manifest.source, method=method_record, parent=parent.name,
            runtime_config=runtime_config, inputs=list(parent.manifest.inputs), outputs=list(parent.manifest.outputs),
            libraries=describe()["libraries"], built_on=build_record(), notes=notes, layer_plan=plan,
        )
        finalize(tmp, manifest)
    return Artifact.load(out)


def _layer_plan(parent: Artifact, method_name: str, staged: Path, result: MethodResult) -> str | None:
    """Write layers.json beside the graph, read back from what was written (after the rewrites above), and return
    its name; None where no layer is quantized and no method said why one is float (fp16, openvino-bf16: their
    precision is the whole graph's, and the manifest says it)."""
    from ..layer_plan import LAYERS_FILE
    from ..layer_plan_graph import plan_from_graph

    encoder = ("the encoder graph kept fp32: this plan is the decoder's",) if parent.manifest.kind == SEQ2SEQ else ()
    plan = plan_from_graph(parent.format, staged / result.model_file, method_name, parent.model_path,
                           result.float_reasons, (*result.transforms, *encoder))
    if plan is None or not (plan.quantized or result.float_reasons):
        return None
    plan.save(staged / LAYERS_FILE)  # the artifact's root, where the manifest's relative path points
    return LAYERS_FILE


def copy_model_files(parent: Artifact, target: Path) -> str:
    """Copy the parent's graph and its weight files (for methods that only change how the model runs)."""
    for rel in parent.manifest.files:
        src = parent.directory / rel
        if src.suffix in (".xml", ".bin", ".onnx", ".data"):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / rel)
    return parent.manifest.model_file
