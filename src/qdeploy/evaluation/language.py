"""Language-model quality: perplexity, last-word accuracy (LAMBADA), multiple choice by log-likelihood, and the
agreement of next-token distributions with the fp32 model.

Every metric scores whole sequences with one forward pass each (`session.run`), batched with left padding; the
logits of a real token do not depend on the padding to its left, so batching does not change a score.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import EvalContext, check_path, heldout_texts, register

GENERATIVE = ("text-generation",)
TOKENS_PER_BATCH = 8192  # bounds the logits held at once: batch x length x vocabulary floats


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def left_pad(sequences: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of sequences padded on the left to the longest (decoders read the last column)."""
    width = max(map(len, sequences))
    ids = np.full((len(sequences), width), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    return ids, mask


def token_logprobs(session, sequences: list[list[int]], ctx: EvalContext) -> list[np.ndarray]:
    """For each token sequence, log p(token_i | tokens_<i) for i >= 1 (length len - 1), in the input order."""
    pad = int(ctx.tokenizer.pad_token_id or 0)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    results: list[np.ndarray | None] = [None] * len(sequences)
    start = 0
    while start < len(order):
        longest = len(sequences[order[min(len(order) - 1, start + ctx.batch_size - 1)]])
        size = max(1, min(ctx.batch_size, TOKENS_PER_BATCH // max(longest, 1)))
        chunk = order[start:start + size]
        ids, mask = left_pad([sequences[i] for i in chunk], pad)
        width = ids.shape[1]
        logprobs = _log_softmax(session.run({"input_ids": ids, "attention_mask": mask})["logits"])
        for row, i in enumerate(chunk):
            n = len(sequences[i])
            lp = logprobs[row, width - n:-1]
            results[i] = np.take_along_axis(lp, ids[row, width - n + 1:, None], axis=-1)[:, 0]
        start += len(chunk)
    return results  # type: ignore[return-value]


def encode(ctx: EvalContext, text: str) -> list[int]:
    return list(ctx.tokenizer(text, add_special_tokens=True)["input_ids"])


def read_documents(path) -> list[str]:
    """Documents separated by `<|endoftext|>` (TinyStories) or, without separators, the whole file (WikiText)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason})") from None
    documents = [d.strip() for d in text.split("<|endoftext|>") if d.strip()]
    if not documents:
        raise InputError(f"{path} holds no text")
    return documents


def windows(tokens: list[int], window: int, stride: int) -> list[tuple[list[int], int]]:
    """Sliding windows over a long document: (window tokens, how many of its last tokens are scored here).

    Each token is scored once, with up to `window - stride` tokens of context before it (as in the transformers
    perplexity guide); a document shorter than the window is one window."""
    spans, scored_to = [], 1
    for begin in range(0, max(1, len(tokens) - 1), stride):
        end = min(begin + window, len(tokens))
        spans.append((tokens[begin:end], end - scored_to))
        scored_to = end
        if end == len(tokens):
            break
    return spans


@register("perplexity", GENERATIVE, needs_path=True, read=read_documents, higher_is_better=False,
          description="perplexity on a text file, documents (split at <|endoftext|>) scored separately with a sliding "
                      "window (stride half the window)")
def perplexity(session, ctx: EvalContext, path=None):
    window = ctx.max_positions or 1024
    spans = [span for doc in read_documents(check_path(path, "perplexity"))
             for span in windows(encode(ctx, doc), window, max(1, window // 2))]
    scored = token_logprobs(session, [tokens for tokens, _ in spans], ctx)
    nll = -sum(float(lp[len(lp) - count:].sum()) for lp, (_, count) in zip(scored, spans) if count > 0)
    total = sum(min(count, len(tokens) - 1) for tokens, count in spans)
    return math.exp(nll / max(total, 1)), None


def read_lastword(path) -> list[tuple[str, str]]:
    """(context, last word): LAMBADA JSONL (`{"text": ...}`), or plain text whose sentences become examples
    (each with its paragraph so far as context)."""
    examples: list[tuple[str, str]] = []
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line == "<|endoftext|>":
                continue
            if path.suffix.lower() == ".jsonl":
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{path}:{number} is not a JSON object with a 'text' field") from None
                texts = [text]
            else:
                # Every sentence end in the paragraph: the text up to it, the final punctuation dropped.
                texts = [line[:m.start()] for m in re.finditer(r"[.!?]\"?(\s|$)", line)]
            for text in texts:
                context, _, word = text.strip().rpartition(" ")
                word = word.strip(".,!?;:\"'")
                if context and word:
                    examples.append((context, word))
    if not examples:
        raise InputError(f"{path} holds no examples with a last word to predict")
    return examples


def _continuation(ctx: EvalContext, context: str, continuation: str) -> tuple[list[int], int]:
    """Tokens of context + continuation and how many of them belong to the continuation.

    Tokenized together (sentencepiece tokenizes a word differently at the start of a string); the continuation is
    what follows the context's own tokens."""
    whole = encode(ctx, context + continuation)
    head = encode(ctx, context)
    shared = 0
    while shared < min(len(head), len(whole)) and head[shared] == whole[shared]:
        shared += 1
    return whole, max(1, len(whole) - shared)


@register("lastword", GENERATIVE, needs_path=True, read=read_lastword,
          description="last-word accuracy (LAMBADA): every token of the final word is the greedy prediction")
def lastword(session, ctx: EvalContext, path=None):
    examples = read_lastword(check_path(path, "lastword"))
    pairs = [_continuation(ctx, context, " " + word) for context, word in examples]
    sequences = [tokens for tokens, _ in pairs]
    pad = int(ctx.tokenizer.pad_token_id or 0)
    hits = 0
    for (tokens, count), greedy in zip(pairs, _greedy(session, sequences, ctx, pad)):
        hits += bool(np.array_equal(greedy[-count:], np.array(tokens[-count:])))
    return hits / len(pairs), None


def _greedy(session, sequences: list[list[int]], ctx: EvalContext, pad: int) -> list[np.ndarray]:
    """The argmax prediction for every position 1..n-1 of each sequence (teacher forced)."""
    out = []
    for start in range(0, len(sequences), ctx.batch_size):
        chunk = sequences[start:start + ctx.batch_size]
        ids, mask = left_pad(chunk, pad)
        width = ids.shape[1]
        logits = session.run({"input_ids": ids, "attention_mask": mask})["logits"]
        out += [logits[row, width - len(seq):-1].argmax(axis=-1) for row, seq in enumerate(chunk)]
    return out


def read_choice(path) -> list[tuple[str, list[str], int]]:
    """JSONL with `context` (or `ctx`/`question`/`goal`), `endings` (or `choices`) and `label` (HellaSwag, PIQA, ARC)."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                context = next(row[k] for k in ("context", "ctx", "question", "goal") if k in row)
                endings = next(row[k] for k in ("endings", "choices") if k in row)
                label = int(row["label"])
            except (json.JSONDecodeError, StopIteration, KeyError, TypeError, ValueError):
                raise InputError(f"{path}:{number} needs context, endings (a list) and an integer label") from None
            if not isinstance(endings, list) or not 0 <= label < len(endings):
                raise InputError(f"{path}:{number}: label {label} does not index its {len(endings)} endings")
            items.append((str(context), [str(e) for e in endings], label))
    if not items:
        raise InputError(f"{path} holds no multiple-choice items")
    return items


def _choice_scores(session, ctx: EvalContext, path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = read_choice(path)
    flat = [_continuation(ctx, context, " " + ending.strip()) for context, endings, _ in items for ending in endings]
    scored = token_logprobs(session, [tokens for tokens, _ in flat], ctx)
    loglik = np.array([float(lp[-count:].sum()) for lp, (_, count) in zip(scored, flat)])
    chars = np.array([len(ending) + 1 for _, endings, _ in items for ending in endings], dtype=np.float64)
    bounds = np.cumsum([0] + [len(endings) for _, endings, _ in items])
    labels = np.array([label for _, _, label in items])
    plain = np.array([np.argmax(loglik[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    normed = np.array([np.argmax(loglik[a:b] / chars[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    return plain, normed, labels


@register("choice", GENERATIVE, needs_path=True, read=read_choice,
          description="multiple-choice accuracy by log-likelihood of each ending (HellaSwag, PIQA, ARC style JSONL)")
def choice(session, ctx: EvalContext, path=None):
    plain, _, labels = _choice_scores(session, ctx, check_path(path, "choice"))
    return float((plain == labels).mean()), None


@register("choice-norm", GENERATIVE, needs_path=True, read=read_choice,
          description="multiple-choice accuracy with the log-likelihood normalized by the ending's length in characters")
def choice_norm(session, ctx: EvalContext, path=None):
    _, normed, labels = _choice_scores(session, ctx, check_path(path, "choice-norm"))
    return float((normed == labels).mean()), None


def _next_token_logprobs(session, ctx: EvalContext) -> np.ndarray:
    """Log-probabilities at every position of the first held-out sentences, as float16 (what the baseline keeps)."""
    sequences = [encode(ctx, text)[:64] for text in heldout_texts()[:16]]
    ids, mask = left_pad(sequences, int(ctx.tokenizer.pad_token_id or 0))
    width = ids.shape[1]
    logprobs = _log_softmax(session.run({"input_ids": ids, "attention_mask": mask})["logits"])
    return np.concatenate([logprobs[row, width - len(seq):] for row, seq in enumerate(sequences)]).astype(np.float16)


def _against_reference(session, ctx: EvalContext, name: str, identical: float, compare):
    """Next-token log-probabilities of this session compared with the fp32 baseline's (kept as the raw outputs)."""
    logprobs = _next_token_logprobs(session, ctx)
    reference = ctx.reference.get(name)
    if reference is None:
        return identical, logprobs
    return float(compare(reference.astype(np.float64), logprobs.astype(np.float64))), logprobs


@register("token-agreement", GENERATIVE, needs_path=False,
          description="share of held-out positions where the top-1 next token equals the fp32 PyTorch model's")
def token_agreement(session, ctx: EvalContext, path=None):
    return _against_reference(session, ctx, "token-agreement", 1.0,
                              lambda p, q: (q.argmax(-1) == p.argmax(-1)).mean())


@register("kl", GENERATIVE, needs_path=False, higher_is_better=False,
          description="mean KL divergence KL(fp32 || variant) of next-token distributions on held-out sentences")
def kl(session, ctx: EvalContext, path=None):
    return _against_reference(session, ctx, "kl", 0.0, lambda p, q: (np.exp(p) * (p - q)).sum(axis=-1).mean())
