"""The command line, end to end, in a subprocess: the report contract, and one-line errors with exit code 2."""
import json
import os
import subprocess
import sys

import pytest

from .conftest import SST2_DEV, SST2_MODEL, STORIES


def qdeploy(*args, cwd=None, env=None):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "qdeploy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=600)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    dev = tmp / "dev-200.tsv"
    dev.write_text("\n".join(SST2_DEV.read_text(encoding="utf-8").splitlines()[:201]) + "\n", encoding="utf-8")
    out = tmp / "out"
    proc = qdeploy("run", "--model", SST2_MODEL, "--task", "text-classification",
                   "--methods", "ort-dynamic,nncf-weight-int8", "--runtimes", "auto",
                   "--eval", f"accuracy={dev}", "--batch-sizes", "1,2", "--seq-len", "32",
                   "--warmup", "1", "--min-reps", "3", "--min-time-s", "0", "--throughput-streams", "2",
                   # Two threads named: on a busy machine the thread probe would choose one, and OpenVINO cannot
                   # then open the two streams this run asks for.
                   "--threads", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_report_contract(small_run):
    out, proc = small_run
    assert proc.stdout.strip().splitlines()[-1] == str(out / "report.html")
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "qdeploy.report/1"
    for key in ("cpu_model", "cores_physical", "memory_gb", "isa", "os", "python", "libraries"):
        assert key in report["machine"]
    assert report["model"]["task"] == "text-classification"
    combos = {(r["variant"], r["runtime"], r["batch"]) for r in report["results"]}
    expected_cells = {("pytorch-fp32", "torch"), ("onnx-fp32", "ort-cpu"), ("openvino-fp32", "openvino-cpu"),
                      ("ort-dynamic", "ort-cpu"), ("nncf-weight-int8", "openvino-cpu")}
    assert combos == {(v, r, b) for v, r in expected_cells for b in (1, 2)}
    for row in report["results"]:
        for key in ("variant", "runtime", "format", "precision", "batch", "seq_len", "latency_ms", "throughput_per_s",
                    "speedup_vs_fp32", "size_mb", "peak_rss_mb", "quality"):
            assert key in row, key
        assert row["seq_len"] == 32
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]
        assert row["speedup_vs_fp32"] > 0
        q = row["quality"]
        assert q["metric"] == "accuracy" and q["fp32_value"] > 0.8
        assert abs(q["delta"]) <= 0.03
        concurrent = row["concurrent"]
        assert concurrent["streams"] == 2 and concurrent["requests"] >= 3 and concurrent["items_per_s"] > 0
        assert concurrent["speedup_vs_fp32"] > 0
        if row["variant"] == "pytorch-fp32":
            assert row["speedup_vs_fp32"] == 1.0 and q["delta"] == 0 and concurrent["speedup_vs_fp32"] == 1.0
        if row["variant"] in ("onnx-fp32", "openvino-fp32"):
            assert row["speedup_vs_runtime_fp32"] == 1.0
    assert any(s["runtime"] == "ort-cuda" and "CUDAExecutionProvider" in s["reason"] for s in report["skipped"])


def test_artifacts_and_human_reports(small_run):
    out, _ = small_run
    for name in ("onnx-fp32", "openvino-fp32", "ort-dynamic", "nncf-weight-int8"):
        manifest = json.loads((out / "artifacts" / name / "manifest.json").read_text())
        assert manifest["format"] in ("onnx", "openvino")
        assert (out / "artifacts" / name / manifest["model_file"]).is_file()
        assert all(len(h) == 64 for h in manifest["files"].values())
    assert not [p for p in (out / "artifacts").iterdir() if p.name.startswith(".tmp-")]
    html = (out / "report.html").read_text()
    assert "<svg" in html and "https://" not in html and "<script src" not in html
    assert "ort-dynamic" in (out / "report.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["run", "--methods", "gptq"], "unknown method 'gptq'; choose from: "),
    (["run", "--runtimes", "tensorflow"], "unknown runtime 'tensorflow'; choose from: "),
    (["run", "--runtimes", "torch,ort-cuda"], "runtime ort-cuda is not available: execution provider "
                                              "CUDAExecutionProvider is not in this onnxruntime build"),
    (["run", "--resume", "/nonexistent-run"], "--resume needs the directory of an earlier run"),
    (["run", "--model", "./does/not/exist"], "model directory ./does/not/exist does not exist"),
    (["run", "--model", "someone/some-model"], "could not be fetched from the Hugging Face hub"),
    (["run", "--task", "summarization"], "unknown task 'summarization'; choose from: feature-extraction"),
    (["run", "--eval", "stsb=/no/such/file.tsv"], "evaluation file for stsb does not exist"),
    (["run", "--eval", "accuracy=/x.tsv"], "metric accuracy does not apply to task feature-extraction"),
    (["run", "--seq-len", "abc"], "invalid int value"),
    (["run", "--methods", "ort-static", "--option", "ort-static.per_channel=maybe"], "must be true or false"),
    (["run", "--seq-len", "4096"], "beyond what all-MiniLM-L6-v2 allows (512 positions)"),
    (["quantize", "/nonexistent", "--method", "ort-dynamic", "--out", "/tmp/x"], "is not a qdeploy artifact"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path, capsys, monkeypatch):
    # In-process for speed; test_exit_code_in_a_real_process checks the same through a real process.
    from qdeploy.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adds_out = args[0] == "run" and "--resume" not in args
    code = main([*args, *(["--out", str(tmp_path / "o")] if adds_out else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_exit_code_in_a_real_process(tmp_path):
    proc = qdeploy("run", "--methods", "gptq", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown method 'gptq'" in proc.stderr and "Traceback" not in proc.stderr


def test_run_never_overwrites(tmp_path):
    (tmp_path / "taken").mkdir()
    proc = qdeploy("run", "--model", SST2_MODEL, "--task", "text-classification", "--out", tmp_path / "taken")
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_help_has_examples():
    proc = qdeploy("run", "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--eval" in proc.stdout


def test_a_run_whose_every_method_failed_exits_1_and_resume_tries_it_again(tmp_path):
    """qat trains classifiers and encoders only: on a language model its one cell fails (for real, in the quantize
    stage), so nothing that was asked for was measured. The report is still written; the exit code says it failed."""
    out = tmp_path / "out"
    small = ["--runtimes", "ort-cpu", "--batch-sizes", "1", "--seq-len", "16", "--warmup", "1", "--min-reps", "3",
             "--min-time-s", "0", "--rounds", "6", "--new-tokens", "4"]
    proc = qdeploy("run", "--model", STORIES, "--methods", "qat", *small, "--out", out)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "report.html")
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("qdeploy: error: the run failed: every requested method failed (qat)"), last
    assert "not run qat on (all): qat supports" in proc.stderr
    first = json.loads((out / "cells" / "build-qat.json").read_text())
    assert "skipped" in first

    resumed = qdeploy("run", "--resume", out, "--keep-going")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((out / "cells" / "build-qat.json").read_text())
    assert again["session"] != first["session"], "the failed cell was not tried again on --resume"
    assert "every requested method failed" not in resumed.stderr


def test_outcome_counts_what_was_asked_for():
    from qdeploy.pipeline.outcome import outcome
    from qdeploy.report.model import Report, Row

    def row(variant, runtime):
        return Row.from_dict({"variant": variant, "runtime": runtime, "batch": 1})

    plan = {"methods": [{"name": "ort-dynamic", "options": {}}, {"name": "ort-static", "options": {}}],
            "runtimes": ["torch", "ort-cpu"]}
    skipped = [{"variant": "ort-static", "runtime": "(all)", "reason": "calibration failed\nsecond line"}]
    some = outcome(Report(plan=plan, skipped=skipped, results=[row("pytorch-fp32", "torch"),
                                                               row("ort-dynamic", "ort-cpu")]))
    assert not some.failed and some.failed_methods == ("ort-static",)
    assert [f.line() for f in some.failures] == ["ort-static on (all): calibration failed"]
    none = outcome(Report(plan=plan, skipped=skipped, results=[row("pytorch-fp32", "torch"),
                                                               row("onnx-fp32", "ort-cpu")]))
    assert none.failed and "every requested method failed (ort-dynamic, ort-static)" in none.summary()
    runtime_down = outcome(Report(plan={**plan, "methods": []}, results=[row("pytorch-fp32", "torch")]))
    assert runtime_down.failed and runtime_down.failed_runtimes == ("ort-cpu",)
    auto = outcome(Report(plan={"methods": [], "runtimes": ["auto"]}, results=[row("pytorch-fp32", "torch")],
                          skipped=[{"variant": "(all)", "runtime": "ort-cuda", "reason": "not installed"}]))
    assert not auto.failed  # a runtime that is not installed here was never tried
    assert not auto.failures[0].retryable and some.failures[0].retryable
