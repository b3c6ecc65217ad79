"""A GGUF file (llama.cpp's format) as a model source.

transformers reads a GGUF through its GGUF loader, tokenizer included, and dequantizes the weights to float; that
float model is saved once as an ordinary model directory, cached by the file's sha256, and is then exported, quantized
and measured like any other. Its "fp32" is the dequantized model: the GGUF's own quantization type is recorded beside
it. The conversion gets some tokenizer settings wrong (SmolLM2-135M-Instruct Q4_1: eos `<|im_start|>` where the GGUF
says id 2, a start token added where the GGUF says none), so they are checked against the GGUF's metadata and
corrected, and each correction is recorded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .artifact import GGUF_MAGIC, sha256_file, staging
from .errors import InputError

SUFFIX = ".gguf"
RECORD = "qdeploy-gguf.json"  # what the cached directory was made from, and what was corrected


# Bumped when a conversion changes what it writes: a cached directory of an older conversion is made again.
CONVERTER = 2

def cache_root() -> Path:
    return Path(os.environ.get("QDEPLOY_CACHE", Path.home() / ".cache" / "qdeploy")) / "gguf"


def gguf_file(path: Path) -> Path | None:
    """The GGUF file a model spec names: the file itself, or the one GGUF in a directory without config.json."""
    if path.is_file() and path.suffix == SUFFIX:
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob(f"*{SUFFIX}"))
        if len(found) > 1:
            raise InputError(f"{path} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}); "
                             "pass the one to use")
        return found[0] if found else None
    return None


def _metadata(file: Path) -> dict:
    """The GGUF's own word on its tokenizer and quantization, read without loading a tensor."""
    import gguf

    reader = gguf.GGUFReader(str(file))

    def value(key: str):
        field = reader.fields.get(key)
        if field is None or not field.data:
            return None
        part = field.parts[field.data[0]]
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        return part.tolist()[0]

    file_type = value("general.file_type")
    try:
        quantization = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quantization = f"file type {file_type}"
    return {"bos_token_id": value("tokenizer.ggml.bos_token_id"), "eos_token_id": value("tokenizer.ggml.eos_token_id"),
            "padding_token_id": value("tokenizer.ggml.padding_token_id"),
            "add_bos_token": value("tokenizer.ggml.add_bos_token"), "quantization": quantization,
            "architecture": value("general.architecture")}


def _correct_tokenizer(tokenizer, meta: dict) -> list[str]:
    """Bring the converted tokenizer in line with the GGUF's metadata; one note per change."""
    fixes = []
    for role in ("bos", "eos"):
        wanted = meta.get(f"{role}_token_id")
        if wanted is None:
            continue
        token = tokenizer.convert_ids_to_tokens(int(wanted))
        if getattr(tokenizer, f"{role}_token") != token:
            fixes.append(f"{role}_token {getattr(tokenizer, f'{role}_token')!r} -> {token!r} (GGUF id {wanted})")
            setattr(tokenizer, f"{role}_token", token)
    pad = meta.get("padding_token_id")
    if tokenizer.pad_token is None and pad is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(pad))
        fixes.append(f"pad_token None -> {tokenizer.pad_token!r} (GGUF id {pad})")
    fixes += _byte_level_decoder(tokenizer)
    add_bos = meta.get("add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token") and bool(tokenizer.add_bos_token) != bool(add_bos):
        fixes.append(f"add_bos_token {tokenizer.add_bos_token} -> {bool(add_bos)} (GGUF)")
        tokenizer.add_bos_token = bool(add_bos)
    return fixes


def _byte_level_decoder(tokenizer) -> list[str]:
    """A byte-level BPE (GPT-2's pre-tokenizer; SmolLM2) decodes with ByteLevel alone. transformers' GGUF converter
    chains SentencePiece's ByteFallback, Fuse and a "▁" replacement before it, which decode the same text (a byte-level
    vocabulary has no "<0xNN>" or "▁" tokens) but which openvino-tokenizers cannot convert, so OpenVINO GenAI got no
    detokenizer. Kept only when the heldout sentences decode exactly as before."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return []
    state = json.loads(backend.to_str())
    pre, decoder = state.get("pre_tokenizer") or {}, state.get("decoder") or {}
    parts = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else []
    byte_level = [d for d in parts if d.get("type") == "ByteLevel"]
    if pre.get("type") != "ByteLevel" or not byte_level or len(parts) == 1:
        return []
    from tokenizers import decoders

    from .textdata import builtin_path

    lines = builtin_path("heldout.txt").read_text(encoding="utf-8").splitlines()[:50]
    ids = [tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]
    before = [tokenizer.decode(i) for i in ids]
    original = backend.decoder
    backend.decoder = decoders.ByteLevel()
    if [tokenizer.decode(i) for i in ids] != before:
        backend.decoder = original
        return []
    return [f"decoder {'+'.join(d['type'] for d in parts)} -> ByteLevel (the same text, and openvino-tokenizers "
            "converts it)"]


def convert(file: Path, digest: str | None = None) -> tuple[Path, dict]:
    """The float model directory made from `file` (made once, then read from the cache) and its record."""
    digest = digest or sha256_file(file)
    target = cache_root() / digest[:16]
    if (target / RECORD).is_file():
        record = json.loads((target / RECORD).read_text(encoding="utf-8"))
        if record.get("converter") == CONVERTER:
            return target, record
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it; say so before a long load)
    except ImportError:
        raise InputError("reading a GGUF file needs the gguf package: pip install 'qdeploy[gguf]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        meta = _metadata(file)
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise InputError(f"{file} is not a readable GGUF file ({str(exc).splitlines()[0] if str(exc) else exc!r})") \
            from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype="float32")
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read the GGUF file {file}: {first}") from None
    fixes = _correct_tokenizer(tokenizer, meta)
    for role in ("bos", "eos", "pad"):  # the model's config says the same as its tokenizer
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            setattr(model.config, f"{role}_token_id", token_id)
            if model.generation_config is not None:
                setattr(model.generation_config, f"{role}_token_id", token_id)
    record = {"file": str(file), "sha256": digest, "quantization": meta["quantization"],
              "architecture": meta["architecture"], "tokenizer_fixes": fixes, "converter": CONVERTER}
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # The slow tokenizer's vocabulary file is the GGUF itself: a copy of the whole model, not a tokenizer file.
        for extra in tmp.glob("*.model"):
            with open(extra, "rb") as fh:
                if fh.read(4) == GGUF_MAGIC:
                    extra.unlink()
        (tmp / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return target, record
