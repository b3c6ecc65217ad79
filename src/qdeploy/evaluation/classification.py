"""Text classification: accuracy on a labelled TSV, and top-1 agreement with the fp32 model."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..textdata import iter_rows
from . import EvalContext, check_path, heldout_texts, mean, per_text, register, scored


def predict(session, texts: list[str], ctx: EvalContext) -> np.ndarray:
    return per_text(session, texts, ctx, lambda inputs, outputs: outputs["logits"].argmax(axis=-1))


def read_labelled(path) -> tuple[list[str], np.ndarray]:
    """TSV/CSV/JSONL with `sentence` (or `text`) and `label` columns, as GLUE's SST-2 dev.tsv."""
    texts, labels = [], []
    for number, row in enumerate(iter_rows(path), 2):
        text = row.get("sentence", row.get("text"))
        label = row.get("label")
        if text is None or label is None:
            raise InputError(f"{path} needs columns 'sentence' (or 'text') and 'label'; "
                             f"found {', '.join(map(str, row))}")
        try:
            labels.append(int(label))
        except (TypeError, ValueError):
            raise InputError(f"{path}: row {number} has label {label!r}, expected an integer class id") from None
        texts.append(text)
    if not texts:
        raise InputError(f"{path} holds no labelled rows")
    return texts, np.array(labels)


@register("accuracy", ("text-classification",), needs_path=True, read=read_labelled, aggregate=mean, binary=True,
          description="accuracy on a TSV of sentence and label (e.g. SST-2 dev.tsv)")
def accuracy(session, ctx: EvalContext, path=None):
    texts, labels = read_labelled(check_path(path, "accuracy"))
    return scored(mean, predict(session, texts, ctx) == labels)


@register("agreement", ("text-classification",), needs_path=False, aggregate=mean, binary=True,
          description="share of held-out built-in sentences where the top-1 class equals the fp32 PyTorch model's")
def agreement(session, ctx: EvalContext, path=None):
    predictions = predict(session, heldout_texts(), ctx)
    reference = ctx.reference.get("agreement")
    # The baseline agrees with itself on every sentence: its items pair with a variant's sentence by sentence.
    return scored(mean, predictions == (predictions if reference is None else reference), predictions)
