"""Sentence-embedding quality: cosine to the fp32 embeddings, and STS-benchmark Spearman correlation."""
from __future__ import annotations

import csv

import numpy as np

from ..errors import InputError
from . import EvalContext, Tolerance, check_path, heldout_texts, mean, per_text, register, scored


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over real tokens (how all-MiniLM-L6-v2 and most sentence-transformers pool)."""
    weights = mask[..., None].astype(np.float32)
    return (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)


def embed(session, texts: list[str], ctx: EvalContext) -> np.ndarray:
    return per_text(session, texts, ctx,
                    lambda inputs, outputs: mean_pool(outputs["last_hidden_state"], inputs["attention_mask"]))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


@register("cosine", ("feature-extraction",), needs_path=False, aggregate=mean, tolerance=Tolerance("floor", 0.99),
          description="mean cosine similarity of mean-pooled embeddings to the fp32 PyTorch embeddings, on held-out "
                      "built-in sentences")
def cosine(session, ctx: EvalContext, path=None):
    embeddings = embed(session, heldout_texts(), ctx)
    reference = ctx.reference.get("cosine")
    if reference is None:  # the baseline: exactly 1 per sentence, not its own cosine's rounding
        return scored(mean, np.ones(len(embeddings)), embeddings)
    return scored(mean, (_normalize(embeddings) * _normalize(reference)).sum(axis=1), embeddings)


def read_sts(path) -> tuple[list[str], list[str], np.ndarray]:
    """STS-benchmark TSV: genre, file, year, id, score, sentence1, sentence2 (extra columns after sentence2 ignored)."""
    first, second, scores = [], [], []
    with open(path, encoding="utf-8", newline="") as fh:
        try:
            for number, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if not row:
                    continue
                if len(row) < 7:
                    raise InputError(f"{path}:{number} has {len(row)} columns; STS-benchmark rows have at least 7")
                try:
                    scores.append(float(row[4]))
                except ValueError:
                    raise InputError(f"{path}:{number}: score {row[4]!r} is not a number") from None
                first.append(row[5])
                second.append(row[6])
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} is not UTF-8 text ({exc.reason})") from None
    if not scores:
        raise InputError(f"{path} holds no STS pairs")
    return first, second, np.array(scores)


def spearman(items: np.ndarray):
    """Spearman correlation x100 of the two columns (predicted cosine, gold score), over the last item axis: Pearson
    of the tie-averaged ranks, as scipy.stats.spearmanr, but for a whole stack of bootstrap resamples at once."""
    from scipy.stats import rankdata

    ranks = rankdata(items, axis=-2)
    centred = ranks - ranks.mean(axis=-2, keepdims=True)
    x, y = centred[..., 0], centred[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of constant scores has no correlation: nan
        return 100.0 * (x * y).sum(axis=-1) / np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))


@register("stsb", ("feature-extraction",), needs_path=True, scale="points", read=read_sts, aggregate=spearman,
          tolerance=Tolerance("absolute", 1.0, "points"),
          description="STS-benchmark Spearman correlation x100 between cosine of embeddings and the gold scores")
def stsb(session, ctx: EvalContext, path=None):
    first, second, gold = read_sts(check_path(path, "stsb"))
    a = _normalize(embed(session, first, ctx))
    b = _normalize(embed(session, second, ctx))
    # Per pair: (predicted cosine, gold score); the correlation is over the pairs, so only the set has a value.
    return scored(spearman, np.stack([(a * b).sum(axis=1), gold], axis=1))
