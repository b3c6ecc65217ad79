"""Pure tests of the decision: interleaved-ratio statistics, busy detection, tolerances and the recommendation rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qdeploy.baseline import tolerance_for
from qdeploy.benchmarking.interleaved import RoundsScenario, median_interval, ratio, run_rounds
from qdeploy.benchmarking.load import LoadSample, judge
from qdeploy.errors import ConfigError
from qdeploy.plan import Plan, from_dict
from qdeploy.report.recommend import recommend


def test_median_interval_is_the_sign_test_interval():
    values = np.arange(1, 16, dtype=float)  # n = 15: the 4th and the 12th order statistics (coverage 96.5 %)
    assert median_interval(values) == (4.0, 12.0)
    # Coverage of [x_k, x_{n-k+1}] is 1 - 2 P(Binomial(n, 1/2) < k): check it is >= 95 % and k is the largest such.
    for n in (6, 10, 15, 30):
        low, high = median_interval(np.arange(n, dtype=float))
        k = int(low) + 1
        tail = sum(math.comb(n, i) for i in range(k)) / 2 ** n
        assert 1 - 2 * tail >= 0.95
        assert 1 - 2 * (tail + math.comb(n, k) / 2 ** n) < 0.95 or k == n // 2
        assert high == n - k


def test_ratio_per_round_cancels_a_slowdown_shared_by_both_sides():
    base = np.array([10.0, 10, 30, 10, 10, 30, 10, 10])  # rounds 3 and 6 ran on a busy machine
    variant = base / 2
    r = ratio(base, variant)
    assert r.median == 2.0 and r.low == 2.0 and r.high == 2.0
    # A ratio of medians taken at different times would not: 10 ms idle against 15 ms busy reads 0.67x.


def test_rounds_need_at_least_six():
    with pytest.raises(ConfigError):
        RoundsScenario(rounds=5)
    with pytest.raises(ConfigError, match="rounds"):
        from_dict({"rounds": 3})


def test_run_rounds_times_every_session_and_finds_the_faster():
    import time

    def sleeper(seconds):
        return lambda i: time.sleep(seconds)

    rounds = run_rounds({"slow": sleeper(0.004), "fast": sleeper(0.001)}, RoundsScenario(rounds=6, warmup=1))
    assert set(rounds.seconds) == {"slow", "fast"} and all(len(s) == 6 for s in rounds.seconds.values())
    r = rounds.ratio("slow", "fast")
    assert r.rounds == 6 and r.low <= r.median <= r.high and r.median > 1.5
    assert {"load1", "steal_pct", "others_cpu_pct", "own_cpu_pct"} <= set(rounds.load)


def test_busy_reasons_name_each_cause():
    cores = __import__("os").cpu_count()
    calm = LoadSample(load1=0.1, steal_pct=0.0, others_cpu_pct=1.0, own_cpu_pct=50.0, seconds=1.0)
    assert not judge(calm, 0.1, cv=0.02, cv_threshold=0.1)
    busy = judge(LoadSample(load1=cores + 1.5, steal_pct=8.0, others_cpu_pct=50.0, own_cpu_pct=40.0, seconds=1.0),
                 0.2, cv=0.3, cv_threshold=0.1)
    text = "; ".join(busy.reasons)
    assert len(busy.reasons) == 4
    assert "load average" in text and "steal" in text and "other processes" in text and "cv 30 %" in text


def test_default_tolerance_per_metric_kind_and_plan_override():
    plan = Plan()
    assert (tolerance_for("accuracy", plan).kind, tolerance_for("accuracy", plan).amount) == ("absolute", 0.01)
    assert (tolerance_for("agreement", plan).kind, tolerance_for("agreement", plan).amount) == ("absolute", 0.01)
    assert (tolerance_for("stsb", plan).kind, tolerance_for("stsb", plan).amount) == ("absolute", 1.0)
    assert (tolerance_for("perplexity", plan).kind, tolerance_for("perplexity", plan).amount) == ("relative", 0.02)
    assert (tolerance_for("cosine", plan).kind, tolerance_for("cosine", plan).amount) == ("floor", 0.99)
    for name in ("bleu", "rouge"):
        assert (tolerance_for(name, plan).kind, tolerance_for(name, plan).amount) == ("absolute", 1.0)
    strict = from_dict({"tolerance": {"accuracy": 0.005}})
    strict_accuracy = tolerance_for("accuracy", strict)
    assert (strict_accuracy.amount, strict_accuracy.describe()) == (0.005, "0.5 point")
    with pytest.raises(ConfigError, match="tolerance"):
        from_dict({"tolerance": {"accuracy": "one point"}})


def _row(variant, runtime, precision, speed, interval, size, qualifies=True, delta=-0.001, busy=()):
    quality = {"metric": "accuracy", "value": 0.88 + delta, "delta": delta, "scale": "unit",
               "verdict": {"qualifies": qualifies, "phrase": "no significant loss" if qualifies else "loss"}}
    return {"variant": variant, "runtime": runtime, "format": "onnx", "precision": precision, "batch": 1,
            "seq_len": 64, "machine": "local", "speedup_vs_fp32": speed, "speedup_interval": list(interval),
            "size_mb": size, "quality": quality, "busy_reasons": list(busy)}


def _report(rows, isa=None):
    return {"results": rows, "machines": {"local": {"isa": isa or {"avx2": True, "avx512_vnni": True}}}}


BASE = _row("pytorch-fp32", "torch", "fp32", 1.0, (1.0, 1.0), 87, delta=0.0)
ONNX_FP32 = _row("onnx-fp32", "ort-cpu", "fp32", 1.2, (1.15, 1.25), 87, delta=0.0)


def test_tie_goes_to_the_smaller_artifact_then_the_simpler_runtime():
    big = _row("ort-static", "ort-cpu", "int8", 2.0, (1.9, 2.1), 30)
    small = _row("nncf-ptq", "openvino-cpu", "int8", 1.95, (1.85, 2.05), 22)
    choice = recommend(_report([BASE, ONNX_FP32, big, small])).choices[0]
    assert choice.variant == "nncf-ptq" and choice.tied_with == ["ort-static on ort-cpu"]
    assert "1.95x PyTorch fp32 (1.85-2.05)" in choice.headline and "-0.1 point" in choice.headline
    same_size = _row("nncf-ptq", "openvino-cpu", "int8", 1.95, (1.85, 2.05), 30)
    assert recommend(_report([BASE, big, same_size])).choices[0].runtime == "ort-cpu"  # the simpler runtime
    apart = _row("nncf-ptq", "openvino-cpu", "int8", 1.5, (1.4, 1.6), 22)
    assert recommend(_report([BASE, big, apart])).choices[0].variant == "ort-static"  # not tied: the faster


def test_a_faster_variant_that_lost_quality_is_named_but_not_chosen():
    lossy = _row("ort-dynamic", "ort-cpu", "int8", 3.0, (2.8, 3.2), 22, qualifies=False, delta=-0.05)
    good = _row("ort-static", "ort-cpu", "int8", 2.0, (1.9, 2.1), 22)
    choice = recommend(_report([BASE, ONNX_FP32, lossy, good])).choices[0]
    assert choice.variant == "ort-static"
    assert any("ort-dynamic on ort-cpu was faster" in r and "-5.0 points" in r for r in choice.reasons)


def test_fp32_is_recommended_when_nothing_qualifies_or_int8_is_within_noise():
    lossy = _row("ort-dynamic", "ort-cpu", "int8", 3.0, (2.8, 3.2), 22, qualifies=False)
    choice = recommend(_report([BASE, ONNX_FP32, lossy])).choices[0]
    assert choice.variant == "onnx-fp32" and choice.fp32_fallback
    assert "no quantized variant qualified" in choice.reasons
    noise = _row("nncf-ptq", "openvino-cpu", "int8", 1.22, (1.1, 1.3), 22)
    choice = recommend(_report([BASE, ONNX_FP32, noise])).choices[0]
    assert choice.variant == "onnx-fp32" and choice.fp32_fallback and "within noise of fp32" in choice.reasons[0]


def test_the_machine_is_named_where_it_is_the_cause():
    slow = _row("nncf-ptq", "openvino-cpu", "int8", 0.7, (0.65, 0.75), 22)
    slow["speedup_vs_runtime_fp32"], slow["speedup_vs_runtime_fp32_interval"] = 0.5, [0.45, 0.55]
    fast = _row("ort-dynamic", "ort-cpu", "int8", 1.5, (1.4, 1.6), 22)
    rows = [BASE, ONNX_FP32, fast, slow]
    reasons = recommend(_report(rows, {"avx2": True})).choices[0].reasons
    assert any("nncf-ptq on openvino-cpu was 0.70x" in r and "AVX2 without VNNI" in r for r in reasons)
    reasons = recommend(_report(rows, {"avx2": True, "avx512_vnni": True})).choices[0].reasons
    assert not any("VNNI" in r for r in reasons)


def test_busy_rows_are_said_in_the_recommendation():
    busy = _row("ort-static", "ort-cpu", "int8", 2.0, (1.9, 2.1), 22, busy=["load average 3.1 > 2 cores"])
    choice = recommend(_report([BASE, busy])).choices[0]
    assert choice.busy and any("load average 3.1" in r for r in choice.reasons)


def test_markdown_opens_with_the_recommendation_and_ends_with_the_machine():
    from qdeploy.report.markdown import render_markdown

    report = {"schema": "qdeploy.report/1", "model": {"source": "m", "task": "text-classification"},
              "machine": {"cpu_model": "AMD EPYC", "isa": {"avx2": True}}, "settings": {"threads": 2},
              "results": [BASE, _row("ort-static", "ort-cpu", "int8", 2.0, (1.9, 2.1), 22)]}
    report["recommendation"] = recommend(report).to_dict()
    text = render_markdown(report)
    assert text.index("## Recommendation") < text.index("## Results") < text.index("## Machine")
    assert "ship ort-static on ort-cpu: 2.00x PyTorch fp32 (1.90-2.10)" in text
    assert "2.00× (1.90–2.10)" in text  # the table's speed-up carries its interval too


def test_compare_gives_one_recommendation_per_machine():
    from qdeploy.report.compare import build_comparison, render_compare_markdown

    def machine_report(cpu, fast):
        rows = [dict(BASE), _row(fast, "ort-cpu", "int8", 2.0, (1.9, 2.1), 22)]
        return {"schema": "qdeploy.report/1", "model": {"source": "m", "task": "t"},
                "machine": {"cpu_model": cpu}, "settings": {"threads": 2}, "results": rows}

    data = build_comparison([machine_report("AMD EPYC", "ort-static"), machine_report("Intel Xeon", "ort-dynamic")],
                            ["a", "b"])
    assert [len(r["choices"]) for r in data["recommendations"]] == [1, 1]
    text = render_compare_markdown(data)
    assert "## Recommendation per machine" in text
    assert "ship ort-static on ort-cpu" in text and "ship ort-dynamic on ort-cpu" in text
