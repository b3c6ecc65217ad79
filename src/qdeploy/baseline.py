"""The fp32 baselines every number is relative to: the source model on PyTorch, and each runtime's own fp32 artifact.

Speed-ups come from the interleaved rounds of the speed cell (ratios per round, median and interval); quality changes
are paired with the baseline's own per-item results on the same items and judged against the metric's tolerance.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from . import evaluation, models
from .artifact import Artifact, Manifest
from .evaluation import stats
from .plan import Plan
from .report.model import Quality, Row
from .tasks import task as get_task

BASELINE = "pytorch-fp32"
FP32_VARIANTS = {"onnx": "onnx-fp32", "openvino": "openvino-fp32"}  # format -> its fp32 artifact


def baseline_artifact(source: models.ModelSource, task_name: str, input_names: list[str],
                      trust_remote_code: bool = False, pad_token_id: int = 0) -> Artifact:
    """The source model itself, run by PyTorch eager; never written (the source may be read-only)."""
    runtime_config: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if get_task(task_name).generative:
        config = json.loads((source.path / "config.json").read_text())
        eos = config.get("eos_token_id")
        runtime_config["decoder"] = {"pad_token_id": pad_token_id,
                                     "eos_token_id": eos if isinstance(eos, int) else None}
    if get_task(task_name).exporter == "seq2seq":
        runtime_config["seq2seq"] = {}  # PyTorch reads the start, pad and eos ids from the model's config
    manifest = Manifest(format="pytorch", model_file="config.json", precision="fp32", task=task_name,
                        source=source.describe(), inputs=input_names, outputs=list(get_task(task_name).outputs),
                        runtime_config=runtime_config)
    return Artifact(source.path, manifest)



def tolerance_for(metric_name: str, plan: Plan) -> evaluation.Tolerance:
    """The metric's default tolerance, or the plan's amount in the same kind (absolute, relative or floor)."""
    default = evaluation.metric(metric_name).tolerance
    amount = plan.tolerance.get(metric_name)
    return default if amount is None else replace(default, amount=amount)


def _interval_dict(speed: dict[str, Any] | None) -> tuple[float | None, list[float] | None]:
    return (speed["median"], speed["interval"]) if speed else (None, None)


def relate(rows: list[Row], tolerances: dict[str, evaluation.Tolerance]) -> list[Row]:
    """The rows with their speed-ups and quality changes against the PyTorch fp32 rows of the same machine type,
    batch and length; their per-item results, once paired, are dropped (they are not part of the report)."""
    base = {(r.machine, r.batch, r.seq_len): r for r in rows if r.variant == BASELINE}
    base_quality = {(r.machine, q.metric): q.value for r in base.values() for q in r.qualities}
    base_items = {(r.machine, metric): items for r in base.values() for metric, items in r.items.items()}
    related = []
    for row in rows:
        ref = base.get((row.machine, row.batch, row.seq_len))
        speed = row.speed or {}
        speedup, interval = _interval_dict(speed.get("vs_reference"))
        runtime_speedup, runtime_interval = _interval_dict(speed.get("vs_runtime_fp32"))
        for timing, measured in (row.timings or {}).items():
            # Other timings (end-to-end) are not interleaved: their ratio is of two medians, marked as such.
            ref_timing = ((ref.timings if ref else None) or {}).get(timing)
            measured["speedup_vs_fp32"] = (round(ref_timing["latency_ms"]["p50"] / measured["latency_ms"]["p50"], 3)
                                           if ref_timing else None)
        if row.concurrent and ref and ref.concurrent:
            row.concurrent["speedup_vs_fp32"] = round(row.concurrent["items_per_s"] / ref.concurrent["items_per_s"], 3)
        qualities = [_judge(q, row, base_quality.get((row.machine, q.metric)), base_items.get((row.machine, q.metric)),
                            tolerances.get(q.metric)) for q in row.qualities]
        gen, ref_gen = row.generation, ref.generation if ref else None
        if gen and ref_gen:
            gen["decode_speedup_vs_fp32"] = round(gen["decode_tokens_per_s"] / ref_gen["decode_tokens_per_s"], 3)
            gen["ttft_speedup_vs_fp32"] = round(ref_gen["ttft_ms"] / gen["ttft_ms"], 3)
        related.append(replace(row, speedup=speedup, speedup_interval=interval, runtime_speedup=runtime_speedup,
                               runtime_speedup_interval=runtime_interval,
                               rounds=(speed.get("vs_reference") or {}).get("rounds"), busy=bool(row.busy_reasons),
                               baseline_same_process=bool(speed) and row.speed_session is not None,
                               qualities=qualities, quality=qualities[-1] if qualities else None))
    return [replace(row, items={}) for row in related]


def _judge(q: Quality, row: Row, fp32: float | None, fp32_items, tolerance) -> Quality:
    import numpy as np

    metric = evaluation.metric(q.metric)
    delta = None if fp32 is None else round(q.value - fp32, 6)
    items = row.items.get(q.metric)
    pair = None
    if row.variant != BASELINE and items is not None and fp32_items is not None:
        pair = stats.paired(metric, np.asarray(items, dtype=float), np.asarray(fp32_items, dtype=float))
    judged = fp32 is not None and row.variant != BASELINE  # the baseline is what the others are judged against
    return replace(q, fp32_value=fp32,
                   scale=metric.scale,  # renderers and the recommendation speak of points for 0..1 metrics
                   delta=delta,
                   # Signed so that positive is better: a perplexity that rises is a loss.
                   gain=None if delta is None else (delta if metric.higher_is_better else -delta),
                   paired=pair.to_dict() if pair is not None else None,
                   tolerance=tolerance.describe() if tolerance is not None else None,
                   verdict=stats.judge(metric, q.value, fp32, pair, tolerance).to_dict() if judged else None)
