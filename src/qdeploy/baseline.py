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
        runtime_config["decoder"] = {"pad_token_id": pad_token_id, "eos_token_id": eos if isinstance(eos, int) else None}
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


def relate(rows: list[dict[str, Any]], tolerances: dict[str, evaluation.Tolerance]) -> None:
    """Speed-ups and quality changes against the PyTorch fp32 rows of the same machine type, batch and length."""
    base = {(r["machine"], r["batch"], r["seq_len"]): r for r in rows if r["variant"] == BASELINE}
    base_quality = {(r["machine"], q["metric"]): q["value"] for r in base.values() for q in r["qualities"]}
    base_items = {(r["machine"], metric): items for r in base.values() for metric, items in r["items"].items()}
    for row in rows:
        ref = base.get((row["machine"], row["batch"], row["seq_len"]))
        speed = row.get("speed") or {}
        row["speedup_vs_fp32"], row["speedup_interval"] = _interval_dict(speed.get("vs_reference"))
        row["speedup_vs_runtime_fp32"], row["speedup_vs_runtime_fp32_interval"] = \
            _interval_dict(speed.get("vs_runtime_fp32"))
        row["rounds"] = (speed.get("vs_reference") or {}).get("rounds")
        row["busy"] = bool(row.get("busy_reasons"))
        for timing, measured in (row.get("timings") or {}).items():
            # Other timings (end-to-end) are not interleaved: their ratio is of two medians, marked as such.
            ref_timing = ((ref or {}).get("timings") or {}).get(timing)
            measured["speedup_vs_fp32"] = (round(ref_timing["latency_ms"]["p50"] / measured["latency_ms"]["p50"], 3)
                                           if ref_timing else None)
        if row.get("concurrent") and ref and ref.get("concurrent"):
            row["concurrent"]["speedup_vs_fp32"] = round(row["concurrent"]["items_per_s"]
                                                         / ref["concurrent"]["items_per_s"], 3)
        row["baseline_same_process"] = bool(speed) and row.get("speed_session") is not None
        for q in row["qualities"]:
            _judge(q, row, base_quality.get((row["machine"], q["metric"])),
                   base_items.get((row["machine"], q["metric"])), tolerances.get(q["metric"]))
        gen, ref_gen = row.get("generation"), (ref or {}).get("generation")
        if gen and ref_gen:
            gen["decode_speedup_vs_fp32"] = round(gen["decode_tokens_per_s"] / ref_gen["decode_tokens_per_s"], 3)
            gen["ttft_speedup_vs_fp32"] = round(ref_gen["ttft_ms"] / gen["ttft_ms"], 3)
        row["quality"] = row["qualities"][-1] if row["qualities"] else None
    for row in rows:
        row.pop("items", None)  # per-item results are inputs to the paired tests, not part of the report


def _judge(q: dict[str, Any], row: dict[str, Any], fp32: float | None, fp32_items, tolerance) -> None:
    import numpy as np

    metric = evaluation.metric(q["metric"])
    q["fp32_value"] = fp32
    q["scale"] = metric.scale  # renderers and the recommendation speak of points for 0..1 metrics
    q["delta"] = None if fp32 is None else round(q["value"] - fp32, 6)
    # Signed so that positive is better: a perplexity that rises is a loss.
    q["gain"] = None if q["delta"] is None else (q["delta"] if metric.higher_is_better else -q["delta"])
    items = row["items"].get(q["metric"])
    pair = None
    if row["variant"] != BASELINE and items is not None and fp32_items is not None:
        pair = stats.paired(metric, np.asarray(items, dtype=float), np.asarray(fp32_items, dtype=float))
        q["paired"] = pair.to_dict()
    if tolerance is not None:
        q["tolerance"] = tolerance.describe()
    if fp32 is not None and row["variant"] != BASELINE:  # the baseline is what the others are judged against
        q["verdict"] = stats.judge(metric, q["value"], fp32, pair, tolerance).to_dict()
