"""Artifacts: a directory of model files plus manifest.json, written atomically.

Everything a runtime needs to run an artifact is in its manifest (`runtime_config`), so runtimes never need to know how
the artifact was made. Paths inside a manifest are relative and must stay inside the artifact directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "qdeploy.manifest/1"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt",
    "vocab.json", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json", "config.json",
    "generation_config.json", "chat_template.jinja", "chat_template.json",
)
GGUF_MAGIC = b"GGUF"
# Files an engine reads beside the graph (engine_files.py): not weights, so not counted in an artifact's size.
ENGINE_FILES = ("genai_config.json", "openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml",
                "openvino_detokenizer.bin")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_join(root: Path, relative: str) -> Path:
    """Resolve a manifest path; absolute paths and escapes from `root` are refused before any file is opened."""
    if not relative or os.path.isabs(relative) or Path(relative).drive:
        raise InputError(f"path {relative!r} in {root} must be relative to the artifact directory")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InputError(f"path {relative!r} in {root} escapes the artifact directory")
    return resolved


ENCODER, DECODER, SEQ2SEQ = "encoder", "decoder", "seq2seq"


def kind_of(task_name: str) -> str:
    """The kind of model a task exports (see Manifest.kind)."""
    from .tasks import task

    the_task = task(task_name)
    return DECODER if the_task.generative else SEQ2SEQ if the_task.exporter == SEQ2SEQ else ENCODER


@dataclass
class Manifest:
    format: str  # "pytorch" | "onnx" | "openvino"
    model_file: str
    precision: str
    task: str
    source: dict[str, Any]  # {"model": ..., "sha256": ...}
    method: dict[str, Any] | None = None  # {"name": ..., "config": {...}}
    parent: str | None = None
    runtime_config: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    libraries: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    validation: dict[str, Any] = field(default_factory=dict)  # what the export was checked against, and how close
    built_on: dict[str, Any] = field(default_factory=dict)  # cpu_model, isa flags, oneDNN cap where it was made
    package: dict[str, Any] = field(default_factory=dict)  # set by `qdeploy package`: measured metrics, versions
    notes: list[str] = field(default_factory=list)
    # layers.json: what was done to each layer (layer_plan.py); None in exports and artifacts written before plans
    layer_plan: str | None = None
    schema: str = MANIFEST_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @property
    def kind(self) -> str:
        """encoder (one call per batch), decoder (a causal LM run token by token with its cache) or seq2seq (an
        encoder graph and a decoder graph): what decides how the artifact is run, quantized and measured."""
        return kind_of(self.task)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> "Manifest":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InputError(f"{where}: unknown manifest keys {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"{where}: malformed manifest ({exc})") from None


@dataclass
class Artifact:
    directory: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def format(self) -> str:
        return self.manifest.format

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def model_path(self) -> Path:
        return safe_join(self.directory, self.manifest.model_file)

    def size_mb(self) -> float:
        """Size of the model's own files (weights and graph), not tokenizer or manifest."""
        model_files = [f for f in self.manifest.files if Path(f).name not in TOKENIZER_FILES + ENGINE_FILES]
        total = sum(safe_join(self.directory, f).stat().st_size for f in model_files)
        return round(total / 2**20, 2)

    def max_positions(self) -> int | None:
        """The longest input the model takes, from the config.json exported beside it (None when it does not say)."""
        config = self.directory / "config.json"
        if "config.json" not in self.manifest.files or not config.is_file():
            return None
        from .tasks import max_positions

        return max_positions(json.loads(config.read_text(encoding="utf-8")))

    @classmethod
    def load(cls, directory: str | Path, verify: bool = False, graph: bool = True) -> "Artifact":
        """The artifact in `directory`; graph=False reads its manifest only (no graph library imported), for the
        command line's checks that come before any long work."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise InputError(f"{directory} is not a qdeploy artifact (no {MANIFEST}); create one with `qdeploy export`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not valid JSON ({exc})") from None
        manifest = Manifest.from_dict(data, path)
        for rel in [manifest.model_file, *manifest.files]:
            safe_join(directory, rel)
        artifact = cls(directory, manifest)
        if manifest.format == "onnx" and graph:
            check_onnx_external_data(artifact.model_path)
        if verify:
            artifact.verify()
        return artifact

    def verify(self) -> None:
        for rel, expected in self.manifest.files.items():
            path = safe_join(self.directory, rel)
            if not path.is_file():
                raise InputError(f"artifact {self.directory}: file {rel} is missing")
            if sha256_file(path) != expected:
                raise InputError(f"artifact {self.directory}: {rel} does not match its sha256 in the manifest; "
                                 "refusing to load")


def check_onnx_external_data(model_path: Path) -> None:
    """Every external-data location of an ONNX graph must be a relative path inside the graph's directory.

    Checked on the graph alone (no tensor data loaded), before ONNX Runtime or onnx would open those files.
    """
    import onnx

    if not model_path.is_file():
        raise InputError(f"ONNX graph {model_path} is missing")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise InputError(f"{model_path} is not a readable ONNX graph ({type(exc).__name__})") from None
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            safe_join(model_path.parent, location)


def copy_tokenizer(source_dir: Path, target_dir: Path) -> None:
    """The tokenizer's files and its OpenVINO IRs (genai_config.json names the graph: each artifact writes its own)."""
    for name in TOKENIZER_FILES + ENGINE_FILES[1:]:
        source = source_dir / name
        if source.is_file():
            with open(source, "rb") as fh:
                if fh.read(4) == GGUF_MAGIC:  # a "tokenizer.model" that is a whole GGUF model: not a tokenizer file
                    continue
            shutil.copy2(source, target_dir / name)


@contextmanager
def staging(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; rename it into place only when the block completes.

    A crash, kill or full disk leaves a `.tmp-*` directory (never something that looks like a finished artifact).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; choose another --out or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a finished artifact gets the usual permissions
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def finalize(directory: Path, manifest: Manifest) -> Artifact:
    """Hash every file and write manifest.json last (inside the staging directory)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(directory).as_posix()] = sha256_file(path)
    manifest.files = files
    tmp = directory / (MANIFEST + ".part")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)
    return Artifact(directory, manifest)
