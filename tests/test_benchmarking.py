"""Benchmark scenarios on the real SST-2 classifier: OpenVINO's async throughput, end-to-end timing, repeatability,
and `qdeploy compare` over two real runs."""
import json

import pytest

from qdeploy import cli, pipeline, runtimes
from qdeploy import plan as plans
from qdeploy.benchmarking import (END_TO_END, LatencyScenario, ThroughputScenario, benchmark_case, measure_concurrent,
                                  measure_timings, throughput_runner)
from qdeploy.errors import ConfigError
from qdeploy.report.compare import compare_runs

from .conftest import SST2_MODEL

QUICK = ThroughputScenario(streams=2, warmup=1, min_requests=4, min_time_s=0.5)


def _case(artifact, batch=1, seq_len=32):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(artifact.directory))
    return benchmark_case(tokenizer, list(artifact.manifest.inputs), batch, seq_len, count=2)


def test_openvino_throughput_uses_one_model_and_its_async_queue(sst2_openvino):
    session = runtimes.load(sst2_openvino, "openvino-cpu", 2)
    runner = throughput_runner(session, 2)
    assert runner.settings["performance_hint"] == "THROUGHPUT" and runner.settings["num_streams"] == 2
    assert runner.requests == int(runner.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) >= 1
    # The latency session keeps its own hint: the throughput runner is a second compilation.
    assert str(session.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    record = measure_concurrent(runner, None, {1: _case(sst2_openvino).inputs}, QUICK)[1]
    assert record["method"] == "async-queue" and record["infer_requests"] == runner.requests
    assert record["requests"] >= QUICK.min_requests and record["items_per_s"] > 0
    assert "PERFORMANCE_HINT=THROUGHPUT".lower() in record["what"].lower()


def test_onnxruntime_throughput_keeps_sessions_in_threads(sst2_onnx):
    session = runtimes.load(sst2_onnx, "ort-cpu", 2)
    assert throughput_runner(session, 2) is None
    loaded = []

    def load_stream():
        loaded.append(runtimes.load(sst2_onnx, "ort-cpu", 1))
        return loaded[-1]

    record = measure_concurrent(None, load_stream, {1: _case(sst2_onnx).inputs}, QUICK)[1]
    assert len(loaded) == 2 and record["method"] == "threads" and record["streams"] == 2
    assert record["requests"] >= QUICK.min_requests


def test_end_to_end_tokenizes_inside_the_timed_loop(sst2_onnx):
    case = _case(sst2_onnx, batch=4, seq_len=64)
    calls = []

    class CountingTokenizer:  # the real tokenizer, counted
        def __call__(self, *args, **kwargs):
            calls.append(args[0])
            return case.tokenizer(*args, **kwargs)

    counted = type(case)(case.texts, case.inputs, CountingTokenizer(), case.input_names, case.seq_len)
    session = runtimes.load(sst2_onnx, "ort-cpu", 2)
    scenario = LatencyScenario(warmup=2, min_reps=5, min_time_s=0)
    timed = measure_timings(session, counted, scenario, ["model", "end-to-end"])
    assert len(calls) == scenario.warmup + timed["end-to-end"].iterations  # one tokenization per request
    assert all(texts in case.texts for texts in calls)
    assert timed["end-to-end"].what == END_TO_END and "no tokenization" in timed["model"].what
    assert (timed["model"].batch, timed["model"].seq_len) == (timed["end-to-end"].batch, timed["end-to-end"].seq_len)


def test_timing_is_a_typed_plan_key_and_a_flag():
    args = cli.build_parser().parse_args(["run", "--timing", "model,end-to-end"])
    assert cli._plan_from_args(args).timing == ("model", "end-to-end")
    assert plans.default().timing == ("model",)
    with pytest.raises(ConfigError, match="timing"):
        plans.from_dict({"timing": ["wall-clock"]})
    with pytest.raises(ConfigError, match="must include model"):
        pipeline.check(plans.from_dict({"timing": ["end-to-end"]}))


def _bench(artifact, out, min_time_s):
    code = cli.main(["bench", str(artifact.directory), "--runtime", "ort-cpu", "--batch-sizes", "1", "--seq-len",
                     "128", "--threads", "1", "--warmup", "5", "--min-time-s", str(min_time_s), "--json", str(out)])
    assert code == 0
    (record,) = json.loads(out.read_text())
    return record


@pytest.mark.slow  # a claim about an idle machine: any other job on the cores breaks it by design (make test-slow)
def test_two_back_to_back_bench_runs_agree_within_their_noise(sst2_onnx, tmp_path):
    """Done-when: the medians of two `qdeploy bench` runs differ by less than the spread each run reports.

    The band is one reported standard deviation of a single request (the larger of the two runs'), not its
    standard error: on a shared VM the mean drifts between runs by more than sigma/sqrt(n), while a change in
    the code under test (or a machine that is not idle) moves p50 by more than sigma.
    """
    a = _bench(sst2_onnx, tmp_path / "a.json", 3.0)
    b = _bench(sst2_onnx, tmp_path / "b.json", 3.0)
    band = max(a["latency_ms"]["stdev"], b["latency_ms"]["stdev"])
    diff = abs(a["latency_ms"]["p50"] - b["latency_ms"]["p50"])
    assert a["iterations"] >= 20 and b["iterations"] >= 20
    assert band < 0.5 * min(a["latency_ms"]["p50"], b["latency_ms"]["p50"]), "too noisy to tell: machine not idle?"
    assert diff <= band, f"p50 {a['latency_ms']['p50']} vs {b['latency_ms']['p50']} ms; noise {band} ms"


def _run(tmp_path, name, threads):
    plan = plans.from_dict({"model": str(SST2_MODEL), "task": "text-classification", "methods": [],
                            "runtimes": ["ort-cpu"], "batch_sizes": [1], "seq_len": 32, "threads": threads,
                            "warmup": 1, "min_reps": 5, "min_time_s": 0.3, "throughput_streams": 2,
                            "timing": ["model", "end-to-end"]})
    return pipeline.run(plan, out=tmp_path / name).parent


@pytest.mark.slow  # two real runs, each exporting the classifier: about 25 s
def test_compare_merges_two_real_runs_with_different_threads(tmp_path):
    runs = [_run(tmp_path, "one-thread", 1), _run(tmp_path, "two-threads", 2)]
    report = json.loads((runs[0] / "report.json").read_text())
    row = report["results"][0]
    assert row["what"].startswith("model only") and row["timings"]["end-to-end"]["what"] == END_TO_END
    assert row["concurrent"]["method"] == "threads" and row["runtime_settings"]["session_options"]
    md = (runs[0] / "report.md").read_text()
    assert "## What was timed" in md and END_TO_END in md and "end-to-end p50 ms" in md
    assert "end-to-end p50 ms" in (runs[0] / "report.html").read_text()

    page = compare_runs(runs, tmp_path / "cmp").read_text()
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    labels = [run["label"] for run in data["runs"]]
    assert [label.split(" · ")[-1] for label in labels] == ["1 thread", "2 threads"]
    (merged,) = [r for r in data["rows"] if (r["variant"], r["runtime"]) == ("onnx-fp32", "ort-cpu")]
    assert all(merged["by_run"][label]["p50"] > 0 for label in labels)
    compare_md = (tmp_path / "cmp" / "compare.md").read_text()
    assert all(label in compare_md and label in page for label in labels)
    assert page.startswith("<!DOCTYPE html>")
    for label in labels:  # each run's own median, side by side
        assert f"{merged['by_run'][label]['p50']:.2f}" in page and f"{merged['by_run'][label]['p50']:.2f}" in compare_md
