"""The fine-tuning half of quantization-aware training: labelled text streamed from a file, and a plain torch loop.

Nothing here knows NNCF: the loop trains whatever module it is given (the fake-quantized model) against labels or
against the fp32 teacher's outputs, and reports loss and samples/s through the progress callback.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError, InputError
from ..textdata import _text_column, iter_rows

SHUFFLE_BUFFER = 8192  # rows held for the streamed shuffle; a file up to this size is shuffled exactly
PROBE_ROWS = 64  # the fixed training rows whose loss is measured before and after fine-tuning
REPORT_EVERY_S = 2.0


@dataclass(frozen=True)
class TrainingData:
    """Rows of a TSV/CSV/JSONL/Parquet file: a text column and, optionally, an integer label column.
    Read lazily, once per epoch; only the shuffle buffer is held."""
    path: Path
    text_column: str
    label_column: str | None
    skip: frozenset[int] = frozenset()  # positions (among the rows with text) held out of training

    @classmethod
    def open(cls, path: str, text_column: str = "", label_column: str = "") -> "TrainingData":
        if not path:
            raise ConfigError("qat needs training data: --option train=PATH (TSV/CSV/JSONL/Parquet with a text "
                              "column, and a label column for classification)")
        first = next(iter_rows(path), None)  # InputError when the file is missing or unreadable
        if first is None:
            raise InputError(f"training file {path} holds no rows")
        text = text_column or _text_column(first)
        label = label_column or ("label" if "label" in first else None)
        for name in (text, label):
            if name is not None and name not in first:
                raise InputError(f"training file {path} has no column {name!r}; columns: {', '.join(map(str, first))}")
        return cls(Path(path), text, label)

    def rows(self) -> Iterator[tuple[str, int | None]]:
        for position, row in enumerate(self._rows()):
            if position not in self.skip:
                yield row

    def hold_out(self, count: int, seed: int) -> tuple["TrainingData", list[tuple[str, int | None]]]:
        """`count` rows drawn by `seed`, and this data without them (for choosing the best state on text the
        fine-tune never saw, rather than on the test set)."""
        total = sum(1 for _ in self._rows())
        if count >= total:
            raise ConfigError(f"qat holdout={count} leaves nothing to train on: {self.path} holds {total} rows")
        chosen = frozenset(random.Random(seed).sample(range(total), count))
        held = [row for position, row in enumerate(self._rows()) if position in chosen]
        return TrainingData(self.path, self.text_column, self.label_column, chosen), held

    def _rows(self) -> Iterator[tuple[str, int | None]]:
        columns = [c for c in (self.text_column, self.label_column) if c]
        for number, row in enumerate(iter_rows(self.path, columns), 2):
            text = row.get(self.text_column)
            if not isinstance(text, str) or not text.strip():
                continue
            label = None
            if self.label_column:
                try:
                    label = int(row.get(self.label_column))
                except (TypeError, ValueError):
                    raise InputError(f"{self.path}: row {number} has label {row.get(self.label_column)!r}, "
                                     "expected an integer class id") from None
            yield text, label

    def count(self) -> int:
        count = sum(1 for _ in self.rows())
        if not count:
            raise InputError(f"training file {self.path} holds no text in column {self.text_column!r}")
        return count

    def shuffled(self, seed: int) -> Iterator[tuple[str, int | None]]:
        """Every row once, in an order fixed by `seed` (a streamed shuffle through a bounded buffer)."""
        rng, buffer = random.Random(seed), []
        for row in self.rows():
            if len(buffer) < SHUFFLE_BUFFER:
                buffer.append(row)
                continue
            slot = rng.randrange(len(buffer))
            yield buffer[slot]
            buffer[slot] = row
        rng.shuffle(buffer)
        yield from buffer

    def batches(self, batch_size: int, seed: int) -> Iterator[list[tuple[str, int | None]]]:
        """Batches without end, epoch after epoch; each epoch in its own seeded order."""
        epoch = 0
        while True:
            batch = []
            for row in self.shuffled(seed * 100_003 + epoch):
                batch.append(row)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
            epoch += 1


@dataclass(frozen=True)
class Plan:
    """What the loop is asked to do (taken from the method's config)."""
    steps: int
    batch_size: int
    lr: float
    range_lr: float  # the quantizer ranges' learning rate
    seed: int
    warmup_steps: int
    freeze_after: int | None
    time_budget_s: float
    eval_every: int
    distill: bool


@dataclass
class Summary:
    steps_planned: int
    steps_run: int = 0
    samples: int = 0
    seconds: float = 0.0
    probe_loss_before: float = math.nan
    probe_loss_after: float = math.nan
    first_losses: float = math.nan  # mean training loss of the first ten steps
    last_losses: float = math.nan  # and of the last ten
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, value); step 0 is the post-training start
    best_step: int | None = None
    stopped_by_budget: bool = False
    frozen_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _state_error(student, teacher, mask):
    """Squared error of token states relative to the teacher's mean square, over real tokens."""
    weight = mask.unsqueeze(-1).to(student.dtype)
    return ((student - teacher) ** 2 * weight).sum() / (teacher ** 2 * weight).sum().clamp_min(1e-12)


def task_loss(task: str, distill: bool, labels_known: bool, label_weight: float = 0.0) -> tuple[Callable, dict]:
    """`loss(student_out, teacher_out, labels, mask)` and the keyword arguments both models are called with.

    Labels: cross-entropy. Distillation from the fp32 model: every layer's token states matched to the teacher's
    (squared error relative to the teacher's mean square, averaged over layers), plus for a classifier the KL
    divergence of the class distributions, and `label_weight` times the labels' cross-entropy. The layers give the
    student far more signal per sample than the two logits alone: on MiniLM with every operator int8 (w8a8-all),
    2,000 SST-2 phrases recovered markedly more."""
    import torch.nn.functional as F

    if task not in ("text-classification", "feature-extraction"):
        raise ConfigError(f"qat supports text-classification and feature-extraction, not {task}")
    if not distill:
        if task == "feature-extraction":
            raise ConfigError("qat on a feature-extraction model learns from the fp32 model's embeddings: "
                              "distill=false leaves it no objective")
        if not labels_known:
            raise InputError("qat on a text-classification model needs a label column in the training file "
                             "(label_column=NAME), or distill=true to learn from the fp32 model's outputs")
        return (lambda student, teacher, labels, mask: F.cross_entropy(student["logits"], labels)), {}

    def distillation(student, teacher, labels, mask):
        pairs = list(zip(student["hidden_states"], teacher["hidden_states"]))
        loss = sum(_state_error(s, t, mask) for s, t in pairs) / len(pairs)
        if "logits" in teacher:
            loss = loss + F.kl_div(F.log_softmax(student["logits"], -1), F.log_softmax(teacher["logits"], -1),
                                   log_target=True, reduction="batchmean")
        if label_weight and labels is not None:
            loss = loss + label_weight * F.cross_entropy(student["logits"], labels)
        return loss

    return distillation, {"output_hidden_states": True}


def fine_tune(student, teacher, data: TrainingData, plan: Plan, encode: Callable, loss: tuple[Callable, dict],
              quantizer_params: Callable[[], list], evaluate: Callable | None, progress: Callable[[str], None]
              ) -> Summary:
    """Train `student` in place; with `evaluate` (model -> higher-is-better value), keep the best state seen,
    the untrained start included. `encode(texts)` gives the model's keyword inputs as tensors."""
    import torch

    torch.manual_seed(plan.seed)
    loss_fn, model_kwargs = loss
    summary = Summary(plan.steps)
    params = [p for p in student.parameters() if p.requires_grad]
    ranges = {id(p) for p in quantizer_params()}
    optimizer = torch.optim.AdamW([{"params": [p for p in params if id(p) not in ranges], "lr": plan.lr},
                                   {"params": [p for p in params if id(p) in ranges], "lr": plan.range_lr}],
                                  weight_decay=0.0)
    decay = max(plan.steps - plan.warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / max(plan.warmup_steps, 1), max(0.0, (plan.steps - s) / decay)))
    probe = [row for row, _ in zip(data.rows(), range(PROBE_ROWS))]
    # Dropout off (as NNCF advises for QAT): the quantizer ranges learn from the same activations inference sees.
    student.eval()
    teacher.eval()

    def forward(rows):
        inputs = encode([text for text, _ in rows])
        labels = torch.tensor([label for _, label in rows]) if rows[0][1] is not None else None
        with torch.no_grad():
            reference = teacher(**inputs, **model_kwargs)
        return loss_fn(student(**inputs, **model_kwargs), reference, labels, inputs["attention_mask"])

    def probe_loss() -> float:
        with torch.no_grad():
            return float(sum(forward(probe[i:i + plan.batch_size]).item() * len(probe[i:i + plan.batch_size])
                             for i in range(0, len(probe), plan.batch_size)) / len(probe))

    best_state = None

    def check(step: int) -> None:
        nonlocal best_state
        value = evaluate(student)
        summary.evals.append((step, value))
        progress(f"qat: step {step}, evaluation {value:.4f}")
        if summary.best_step is None or value > dict(summary.evals)[summary.best_step]:
            summary.best_step = step
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}

    summary.probe_loss_before = probe_loss()
    if evaluate is not None:
        check(0)
    losses: list[float] = []
    started = last_report = time.monotonic()
    batches = data.batches(plan.batch_size, plan.seed)
    for step in range(1, plan.steps + 1):
        if time.monotonic() - started > plan.time_budget_s:
            summary.stopped_by_budget = True
            break
        if plan.freeze_after is not None and step == plan.freeze_after + 1:
            for param in quantizer_params():
                param.requires_grad_(False)  # ranges fixed from here; AdamW skips parameters without gradients
            summary.frozen_at = plan.freeze_after
        rows = next(batches)
        loss = forward(rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        summary.steps_run, summary.samples = step, summary.samples + len(rows)
        now = time.monotonic()
        if now - last_report >= REPORT_EVERY_S or step == plan.steps:
            last_report = now
            recent = sum(losses[-10:]) / len(losses[-10:])
            progress(f"qat: step {step}/{plan.steps}, loss {recent:.4f}, "
                     f"{summary.samples / max(now - started, 1e-9):.1f} samples/s")
        if evaluate is not None and (step % plan.eval_every == 0 or step == plan.steps):
            check(step)
    summary.seconds = time.monotonic() - started
    if evaluate is not None and summary.evals[-1][0] != summary.steps_run:
        check(summary.steps_run)  # stopped early: the last state is a candidate too
    if best_state is not None:
        student.load_state_dict(best_state)
    if losses:
        summary.first_losses = sum(losses[:10]) / len(losses[:10])
        summary.last_losses = sum(losses[-10:]) / len(losses[-10:])
    summary.probe_loss_after = probe_loss()
    return summary
