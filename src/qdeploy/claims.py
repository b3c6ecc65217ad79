"""The quality claims qdeploy makes, re-checked: each claim is a method on a model, scored against the fp32 export of
the same format on the same runtime over a fixed slice of real data, and judged by the equivalence test
(evaluation/stats.py) at the tolerance written beside the claim in `benchmarks/claims.yaml`.

A claim fails when the test shows the loss to be larger than its tolerance ("worse by more than X"). A slice too
small to show equivalence ("not enough data to tell") does not fail it; the result says so, with the interval. CI
runs every claim (tests/test_claims.py); `benchmarks/claims_table.py` stores the results that the README's table is
generated from.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, InputError

RUNTIME = {"onnx": "ort-cpu", "openvino": "openvino-cpu"}
FAILS = "worse by more than"


@dataclass(frozen=True)
class Claim:
    id: str
    model: str  # "default" (the task's default model) or a path, "shared:" meaning the shared data directory
    task: str
    data: str  # a file of the metric's kind, "shared:" as above
    items: int  # the slice: the first N records (after `header` lines, which the slice keeps)
    metric: str
    tolerance: float  # in the metric's own units (accuracy 0.01 = 1 point; stsb 1.0 = 1 point)
    method: str
    format: str | None = None  # the parent's format; None: the method's first
    options: dict[str, Any] = field(default_factory=dict)
    header: int = 0

    def parent_key(self) -> tuple[str, str, str]:
        """What the fp32 parent depends on: one export serves every claim on the same model, task and format."""
        from .quantization import method

        return self.model, self.task, self.format or method(self.method).input_format


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    n: int
    fp32: float
    value: float
    delta: float
    interval: tuple[float, float]  # 90 % interval of the delta: what the equivalence test reads
    verdict: str

    @property
    def holds(self) -> bool:
        return not self.verdict.startswith(FAILS)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "holds": self.holds}


def load(path: Path, shared: Path) -> list[Claim]:
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    claims = []
    for entry in raw.get("claims") or []:
        try:
            claim = Claim(**entry)
        except TypeError as exc:
            raise ConfigError(f"{path}: claim {entry.get('id', entry)!r}: {exc}") from None
        claims.append(claim)
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: claim ids repeat")
    return [_in(claim, shared) for claim in claims]


def _in(claim: Claim, shared: Path) -> Claim:
    def place(value: str) -> str:
        return str(shared / value[len("shared:"):]) if value.startswith("shared:") else value

    return Claim(**{**asdict(claim), "model": place(claim.model), "data": place(claim.data)})


def data_slice(path: str, items: int, out_dir: Path, header: int = 0) -> Path:
    """The first `items` records of a data file (after its `header` lines, kept) in a file of its own."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"claim data {source} does not exist")
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    target = Path(out_dir) / f"{source.stem}-{items}{source.suffix}"
    target.write_text("\n".join(lines[:header + items]) + "\n", encoding="utf-8")
    return target


def check(claim: Claim, parent: Callable[[Claim], Any], work: Path) -> ClaimResult:
    """Quantize the claim's fp32 parent (given by `parent`, so that exports are shared), score both on the slice
    through the format's runtime, and judge the paired difference at the claim's tolerance."""
    from transformers import AutoTokenizer

    from . import evaluation, quantization, runtimes
    from .calibration import CalibrationSource
    from .evaluation import Tolerance, stats
    from .tasks import for_generation, task

    Path(work).mkdir(parents=True, exist_ok=True)
    fp32_artifact = parent(claim)
    fmt = fp32_artifact.format
    config = quantization.make_config(claim.method, dict(claim.options), fmt)
    target = Path(work) / claim.id
    artifact = quantization.quantize(fp32_artifact, config, target, CalibrationSource())
    generative = task(claim.task).generative
    tokenizer = AutoTokenizer.from_pretrained(str(fp32_artifact.directory))
    tokenizer = for_generation(tokenizer) if generative else tokenizer
    names = ["input_ids", "attention_mask"] if generative else list(fp32_artifact.manifest.inputs)
    ctx = evaluation.EvalContext(tokenizer, names, max_positions=fp32_artifact.max_positions())
    metric = evaluation.metric(claim.metric)
    data = data_slice(claim.data, claim.items, Path(work), claim.header)
    scores = [metric.evaluate(runtimes.load(a, RUNTIME[fmt]), ctx, str(data)) for a in (fp32_artifact, artifact)]
    pair = stats.paired(metric, scores[1].items, scores[0].items)
    unit = metric.tolerance.unit if metric.tolerance.kind == "absolute" else "unit"
    verdict = stats.judge(metric, scores[1].value, scores[0].value, pair, Tolerance("absolute", claim.tolerance, unit))
    low = pair.low if pair.tost_low is None else pair.tost_low
    high = pair.high if pair.tost_high is None else pair.tost_high
    return ClaimResult(claim, pair.n, scores[0].value, scores[1].value, pair.delta, (low, high), verdict.phrase)


def write_results(results: list[ClaimResult], path: Path, machine: dict[str, Any]) -> None:
    """A stored result: the machine, the date and versions (from `machine`), and every claim's numbers."""
    import datetime

    record = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine, "claims": [r.to_dict() for r in results]}
    Path(path).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
