"""Seq2seq quality from greedy generations: corpus BLEU/chrF on parallel text (sacrebleu), ROUGE on article/summary
pairs (rouge-score), and the agreement of greedy tokens with the fp32 model.

Paths may end in `:N` to score only the first N examples (`bleu=SRC,REF:50`): generation is slow, and a fixed prefix
keeps variants comparable. sacrebleu and rouge-score come with the `generation` extra and are imported only here.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError, UnsupportedError
from . import EvalContext, check_path, heldout_texts, mean, ratio, register, scored

SEQ2SEQ = ("text2text-generation",)
MAX_NEW_TOKENS = 64  # per translation or summary; a row stops earlier at its eos
SOURCE_TOKENS = 512  # articles are long: the encoder reads this much of each (less if the model has fewer positions)
AGREEMENT_TOKENS = 16


def _library(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise UnsupportedError(f"this metric needs {name.split('.')[0]}: pip install 'qdeploy[generation]'") from None


def _limit(spec: str | Path | None, name: str) -> tuple[str, int | None]:
    """`PATH[:N]` -> (PATH, N or None)."""
    if not spec:
        raise ConfigError(f"metric {name} needs a file: --eval {name}=PATH (optionally PATH:N for the first N)")
    text = str(spec)
    match = re.fullmatch(r"(.+):(\d+)", text)
    if not match:
        return text, None
    if int(match.group(2)) < 1:
        raise ConfigError(f"--eval {name}={text}: the count after ':' must be at least 1")
    return match.group(1), int(match.group(2))


def read_parallel(spec) -> list[tuple[str, str]]:
    """`SRC,REF[:N]`: two files with one sentence per line, line i of REF translating line i of SRC."""
    paths, limit = _limit(spec, "bleu")
    parts = paths.split(",")
    if len(parts) != 2:
        raise ConfigError(f"--eval bleu={spec}: give the source and reference files as SRC,REF")
    lines = []
    for part in parts:
        path = check_path(part, "bleu")
        try:
            lines.append(path.read_text(encoding="utf-8").rstrip("\n").split("\n"))
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} is not UTF-8 text ({exc.reason})") from None
    if len(lines[0]) != len(lines[1]):
        raise InputError(f"{parts[0]} has {len(lines[0])} lines but {parts[1]} has {len(lines[1])}; "
                         "parallel files must have one line per sentence")
    pairs = [(s, r) for s, r in zip(*lines) if s.strip()]
    if not pairs:
        raise InputError(f"{parts[0]} holds no sentences")
    return pairs[:limit]


def read_summaries(spec) -> list[tuple[str, str]]:
    """`PATH[:N]`: JSON lines with `article` and `summary`."""
    path_text, limit = _limit(spec, "rouge")
    path = check_path(path_text, "rouge")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((str(row["article"]), str(row["summary"])))
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{number} must be a JSON object with 'article' and 'summary'") from None
    if not pairs:
        raise InputError(f"{path} holds no examples")
    return pairs[:limit]


def generate_texts(session, ctx: EvalContext, sources: list[str], max_length: int,
                   max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy outputs, decoded, in the input order; sources batched by length (a row's output does not depend on
    its batch-mates: the encoder mask hides padding and every decoder row has the same length)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs: list[str] = [""] * len(sources)
    for start in range(0, len(order), ctx.batch_size):
        chunk = order[start:start + ctx.batch_size]
        enc = ctx.tokenizer([sources[i] for i in chunk], padding=True, truncation=True, max_length=max_length,
                            return_tensors="np")
        tokens = session.generate(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64),
                                  max_new_tokens)
        for i, text in zip(chunk, ctx.tokenizer.batch_decode(tokens, skip_special_tokens=True)):
            outputs[i] = text.strip()
    return outputs


@functools.lru_cache(maxsize=None)
def _scorer(kind: str):
    """sacrebleu's BLEU or CHRF with the defaults of `corpus_bleu` / `corpus_chrf`."""
    metrics = _library("sacrebleu.metrics")
    return metrics.BLEU() if kind == "bleu" else metrics.CHRF()


def _corpus(kind: str, items: np.ndarray):
    """The corpus score from per-segment sufficient statistics (n-gram matches and totals, lengths): their sums
    give exactly sacrebleu's corpus score, which is not a mean of sentence scores. A stack (r, n, k) gives r."""
    scorer = _scorer(kind)
    sums = items.sum(axis=-2)
    if sums.ndim == 1:
        return float(scorer._compute_score_from_stats(sums).score)
    return np.array([scorer._compute_score_from_stats(row).score for row in sums.reshape(-1, sums.shape[-1])]
                    ).reshape(sums.shape[:-1])


corpus_bleu = functools.partial(_corpus, "bleu")
corpus_chrf = functools.partial(_corpus, "chrf")


def translation_scores(session, ctx: EvalContext, path) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults), their per-segment statistics and the translations themselves."""
    pairs = read_parallel(path)
    hypotheses = generate_texts(session, ctx, [s for s, _ in pairs], ctx.max_length)
    references = [[r for _, r in pairs]]
    # sacrebleu's own per-segment statistics (private API of sacrebleu 2.x, pinned in the generation extra)
    items = {kind: _scorer(kind)._extract_corpus_statistics(hypotheses, references) for kind in ("bleu", "chrf")}
    return {"bleu": corpus_bleu(np.array(items["bleu"], dtype=np.float64)),
            "chrf": corpus_chrf(np.array(items["chrf"], dtype=np.float64)), "hypotheses": hypotheses, "items": items}


@register("bleu", SEQ2SEQ, needs_path=True, scale="points", read=read_parallel, parses_path=True,
          aggregate=corpus_bleu, description="corpus BLEU (sacrebleu, 13a tokenization) of greedy translations")
def bleu(session, ctx: EvalContext, path=None):
    # No raw outputs: BLEU is measured against the references, not against the fp32 model.
    return scored(corpus_bleu, _remembered(translation_scores, session, ctx, path)["items"]["bleu"])


ROUGE_KINDS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def summary_scores(session, ctx: EvalContext, path) -> dict:
    """Mean ROUGE-1/2/L/Lsum F1 x100 (rouge-score, stemmed), the per-summary F1 x100 and the summaries themselves."""
    rouge_scorer = _library("rouge_score.rouge_scorer")
    pairs = read_summaries(path)
    length = min(SOURCE_TOKENS, ctx.max_positions or SOURCE_TOKENS)
    summaries = generate_texts(session, ctx, [a for a, _ in pairs], length)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KINDS), use_stemmer=True)
    # rougeLsum splits summaries at newlines: one sentence per line, as in the usual CNN/DM setup.
    split = lambda text: "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text) if s)  # noqa: E731
    scores = [scorer.score(split(ref), split(hyp)) for hyp, (_, ref) in zip(summaries, pairs)]
    items = {k: [100 * s[k].fmeasure for s in scores] for k in ROUGE_KINDS}
    means = {k: float(mean(np.array(items[k])[:, None])) for k in ROUGE_KINDS}
    return {**means, "summaries": summaries, "items": items}


@register("rouge", SEQ2SEQ, needs_path=True, scale="points", read=read_summaries, parses_path=True, aggregate=mean,
          description="ROUGE-Lsum F1 x100 (rouge-score, stemmed, one sentence per line) of greedy summaries")
def rouge(session, ctx: EvalContext, path=None):
    return scored(mean, _remembered(summary_scores, session, ctx, path)["items"]["rougeLsum"])


def _remembered(scores, session, ctx: EvalContext, path) -> dict:
    """One generation pass per session and file, whichever of its scores are asked for (bleu and chrf, or the four
    ROUGE variants, share the outputs)."""
    import weakref

    # A weak reference, not id(): a later session may be allocated where a freed one was.
    key = (scores.__name__, str(path))
    held = _LAST.get("session")
    if _LAST.get("key") != key or held is None or held() is not session:
        _LAST.update(key=key, session=weakref.ref(session), value=scores(session, ctx, path))
    return _LAST["value"]


_LAST: dict = {}


@register("chrf", SEQ2SEQ, needs_path=True, scale="points", read=read_parallel, parses_path=True,
          aggregate=corpus_chrf, description="corpus chrF (sacrebleu) of greedy translations")
def chrf(session, ctx: EvalContext, path=None):
    return scored(corpus_chrf, _remembered(translation_scores, session, ctx, path)["items"]["chrf"])


def _rouge_variant(kind: str):
    def score(session, ctx: EvalContext, path=None):
        return scored(mean, _remembered(summary_scores, session, ctx, path)["items"][kind])

    register(kind.replace("rouge", "rouge-").replace("-L", "-l"), SEQ2SEQ, needs_path=True, scale="points",
             read=read_summaries, parses_path=True, aggregate=mean,
             description=f"{kind} F1 x100 (rouge-score, stemmed) of greedy summaries")(score)


for _kind in ("rouge1", "rouge2", "rougeL"):
    _rouge_variant(_kind)


@register("seq2seq-agreement", SEQ2SEQ, needs_path=False, aggregate=ratio,
          description="share of greedy output tokens (held-out sentences, 16 steps) equal to the fp32 PyTorch model's")
def seq2seq_agreement(session, ctx: EvalContext, path=None):
    enc = ctx.tokenizer(heldout_texts()[:8], padding=True, truncation=True, max_length=ctx.max_length,
                        return_tensors="np")
    tokens = session.generate(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64),
                              AGREEMENT_TOKENS, eos_token_id=None)
    reference = ctx.reference.get("seq2seq-agreement")
    # Per sentence (matching tokens, tokens): a sentence's steps depend on each other, so the sentence is the item.
    same = tokens == (tokens if reference is None else np.asarray(reference))
    return scored(ratio, np.stack([same.sum(axis=1), np.full(len(same), same.shape[1])], axis=1), tokens)
