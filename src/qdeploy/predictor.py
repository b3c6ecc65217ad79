"""`qdeploy.load(path)`: a packaged artifact as a predictor from text to what the task returns.

Needs only qdeploy's light core, `tokenizers` and the one runtime that runs the artifact: no torch, no transformers.
Every file's hash is verified before anything is loaded.
"""
from __future__ import annotations

import json
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import runtimes
from .artifact import DECODER, ENCODER, Artifact
from .errors import InputError, UnsupportedError
from .machine import isa

PREFERRED = {"onnx": ("ort-cpu", "ort-openvino", "ort-cuda"), "openvino": ("openvino-cpu",), "pytorch": ("torch",)}


class Predictor:
    def __init__(self, artifact: Artifact, runtime: str, threads: int | None = None):
        from tokenizers import Tokenizer

        self.artifact = artifact
        self.runtime = runtime
        self.session = runtimes.load(artifact, runtime, threads)
        directory = artifact.directory
        if not (directory / "tokenizer.json").is_file():
            raise InputError(f"{directory} has no tokenizer.json; package a model with a fast tokenizer")
        config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
        self.labels = {int(k): v for k, v in config.get("id2label", {}).items()}
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(min(int(config.get("max_position_embeddings", 512)), 512))
        # Causal LMs and encoder-decoders both generate; only a causal LM needs its prompts padded on the left.
        self.generative = artifact.manifest.kind != ENCODER
        if artifact.manifest.kind == DECODER:
            decoder = artifact.manifest.runtime_config["decoder"]
            # Left padding: each row's next token is then in the last column (see runtimes/decoding.py).
            pad_id = int(decoder.get("pad_token_id") or 0)
            self.tokenizer.enable_padding(direction="left", pad_id=pad_id,
                                          pad_token=self.tokenizer.id_to_token(pad_id) or "<pad>")
        else:
            pad = self._pad_token(directory)
            self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id(pad) or 0, pad_token=pad)

    @staticmethod
    def _pad_token(directory: Path) -> str:
        special = directory / "special_tokens_map.json"
        if special.is_file():
            token = json.loads(special.read_text()).get("pad_token")
            if isinstance(token, dict):
                token = token.get("content")
            if token:
                return token
        return "[PAD]"

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        names = ("input_ids", "attention_mask") if self.generative else self.artifact.manifest.inputs
        return {name: np.array(columns[name], dtype=np.int64) for name in names}

    def generate(self, texts: str | list[str], max_new_tokens: int = 64, chat: bool = False,
                 **sampling) -> str | list[str]:
        """Continuations of the prompts (greedy unless do_sample=True; seed, temperature, top_k). With `chat`, each
        text is a user's message, put in the model's chat template (which travels with the artifact)."""
        if not self.generative:
            raise UnsupportedError(f"{self.artifact.directory} is a {self.artifact.manifest.task} artifact; "
                                   "only text-generation and text2text-generation artifacts generate")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if chat:
            texts = [self.chat_prompt(text) for text in texts]
        inputs = self.encode(texts)
        tokens = self.session.generate(inputs["input_ids"], inputs["attention_mask"], max_new_tokens, **sampling)
        eos = self.session.eos_token_id
        texts_out = [self.tokenizer.decode(row[:_until(row, eos)].tolist()) for row in tokens]
        return texts_out[0] if single else texts_out

    def chat_prompt(self, message: str) -> str:
        """`message` as the user's turn in the model's chat template, ready for the assistant's answer."""
        template = self.artifact.directory / "chat_template.jinja"
        if not template.is_file():
            raise UnsupportedError(f"{self.artifact.directory} carries no chat template (chat_template.jinja)")
        try:
            import jinja2
        except ImportError:
            raise InputError("chat=True renders the model's template with jinja2: pip install jinja2") from None
        # As transformers renders chat templates: blocks trimmed, the special tokens by name.
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        config = json.loads((self.artifact.directory / "tokenizer_config.json").read_text(encoding="utf-8")) \
            if (self.artifact.directory / "tokenizer_config.json").is_file() else {}
        return env.from_string(template.read_text(encoding="utf-8")).render(
            messages=[{"role": "user", "content": message}], add_generation_prompt=True,
            bos_token=config.get("bos_token") or "", eos_token=config.get("eos_token") or "")

    def __call__(self, texts: str | list[str], batch_size: int = 32):
        if self.generative:
            return self.generate(texts)
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        results = []
        for start in range(0, len(texts), batch_size):
            inputs = self.encode(texts[start:start + batch_size])
            results.extend(self._postprocess(inputs, self.session.run(inputs)))
        if single:
            return results[0]
        return np.stack(results) if results and isinstance(results[0], np.ndarray) else results

    def _postprocess(self, inputs, outputs):
        task = self.artifact.manifest.task
        if task == "feature-extraction":
            mask = inputs["attention_mask"][..., None].astype(np.float32)
            pooled = (outputs["last_hidden_state"] * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            return list(pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None))
        if task == "text-classification":
            logits = outputs["logits"]
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            return [{"label": self.labels.get(int(i), str(int(i))), "score": float(p[i])}
                    for p, i in zip(probs, probs.argmax(axis=1))]
        raise UnsupportedError(f"qdeploy.load has no predictor for task {task} yet")


def _until(row: np.ndarray, eos: int | None) -> int:
    """Tokens before the first end of sequence (the rest is padding)."""
    hits = np.flatnonzero(row == eos) if eos is not None else []
    return int(hits[0]) if len(hits) else len(row)


def _missing_isa(artifact: Artifact) -> list[str]:
    tuned = artifact.manifest.built_on.get("isa", {})
    here = isa()
    return [flag for flag, present in tuned.items() if present and not here.get(flag)]


def _extract(archive: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="qdeploy-package-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")  # refuses absolute paths, `..` and links out of the target
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{archive} is not a readable qdeploy package archive ({exc})") from None
    entries = [p for p in target.iterdir()]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def load(path: str | Path, runtime: str | None = None, threads: int | None = None) -> Predictor:
    """Load a packaged (or plain) artifact; hashes are verified first and a mismatch refuses to load."""
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        path = _extract(path)
    artifact = Artifact.load(path, verify=True)
    missing = _missing_isa(artifact)
    if missing:
        warnings.warn(f"{path} was tuned on a CPU with {', '.join(missing)}; this CPU lacks it: expect it to be slower "
                      "than the package's measured numbers", stacklevel=2)
    if runtime is None:
        candidates = [r for r in PREFERRED.get(artifact.format, ()) if r in runtimes.names()]
        usable = [r for r in candidates if runtimes.get(r).unavailable_reason() is None]
        if not usable:
            raise UnsupportedError(f"no runtime for {artifact.format} artifacts is installed here; install one of: "
                                   f"{', '.join(candidates)}")
        runtime = usable[0]
    return Predictor(artifact, runtime, threads)
