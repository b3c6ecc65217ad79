"""Tests for merging several run reports into one cross-run report (qdeploy.report.compare).

Hand-built qdeploy.report/1 dicts, modelled on a real run, written to tmp_path/<run>/report.json.
"""
from __future__ import annotations

import copy
import json
import re

import pytest

from qdeploy.errors import ConfigError, InputError
from qdeploy.report.compare import compare_runs

SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def _row(variant, runtime, p50, speedup, delta, *, batch=1, seq_len=128, noisy=False):
    quality = {"metric": "cosine", "value": 1.0 + delta, "fp32_value": 1.0, "delta": delta}
    return {"variant": variant, "runtime": runtime, "format": "onnx", "precision": "int8",
            "batch": batch, "seq_len": seq_len,
            "latency_ms": {"p50": p50, "p90": p50 * 1.05, "p99": p50 * 1.1, "mean": p50, "stdev": 1.0},
            "throughput_per_s": 1000.0 * batch / p50, "speedup_vs_fp32": speedup, "size_mb": 21.9,
            "peak_rss_mb": 824.1, "cv": 0.02, "noisy": noisy, "quality": quality, "qualities": [quality]}


def _report(cpu="AMD EPYC", threads=2, torch="2.13.0+cpu", commit="8056208", sha=SHA,
            task="feature-extraction", results=None):
    return {
        "schema": "qdeploy.report/1", "qdeploy_version": "0.1.0", "created": "2026-11-24T05:22:18+00:00",
        "machine": {"cpu_model": cpu, "cores_physical": 2, "cores_logical": 2, "memory_gb": 23.5,
                    "isa": {"avx2": True, "avx512f": False, "avx512_vnni": True, "amx": False},
                    "onednn_isa_cap": "AVX2", "os": "Linux-6.18.44-x86_64-with-glibc2.36",
                    "python": "3.11.7",
                    "libraries": {"qdeploy": "0.1.0", "torch": torch, "onnxruntime": "1.32.0"},
                    "qdeploy_commit": commit},
        "model": {"source": "all-MiniLM-L6-v2", "task": task, "sha256": sha, "model_type": "bert"},
        "settings": {"threads": threads, "warmup": 5, "min_reps": 20},
        "variants": [], "skipped": [],
        "results": results if results is not None else [
            _row("pytorch-fp32", "torch", 66.046, 1.0, 0.0),
            _row("ort-dynamic", "ort-cpu", 51.88, 1.273, -0.00893),
            _row("pytorch-fp32", "torch", 419.527, 1.0, 0.0, batch=8),
        ],
    }


def _write(tmp_path, name, report):
    run = tmp_path / name
    run.mkdir()
    (run / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return run


@pytest.fixture()
def two_runs(tmp_path):
    a = _report()
    b = _report(cpu="Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", threads=4, torch="2.12.1+cpu",
                commit="cc9d3a3", results=[
                    _row("pytorch-fp32", "torch", 40.5, 1.0, 0.0),
                    # Deliberately inconsistent with 40.5 / p50 so a recomputed ratio would show.
                    _row("ort-dynamic", "ort-cpu", 30.0, 1.777, -0.0101, noisy=True),
                    _row("nncf-ptq<b>", "openvino-cpu", 20.0, 2.02, -0.0047),
                    _row("pytorch-fp32", "torch", 300.0, 1.0, 0.0, batch=8),
                ])
    return [_write(tmp_path, "run-a", a), _write(tmp_path, "run-b", b)]


def _compare(tmp_path, runs):
    html_path = compare_runs(runs, tmp_path / "cmp")
    out = tmp_path / "cmp"
    return (json.loads((out / "compare.json").read_text(encoding="utf-8")),
            (out / "compare.md").read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8"))


def _find(rows, variant, runtime, batch=1, seq_len=128):
    return next(r for r in rows if (r["variant"], r["runtime"], r["batch"], r["seq_len"])
                == (variant, runtime, batch, seq_len))


def test_writes_three_files_and_no_part_files(tmp_path, two_runs):
    html_path = compare_runs(two_runs, tmp_path / "cmp")
    out = tmp_path / "cmp"
    assert html_path == out / "compare.html"
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.json", "compare.md"]


def test_rows_merge_by_key_and_missing_combos_are_null(tmp_path, two_runs):
    data, _, _ = _compare(tmp_path, two_runs)
    assert data["schema"] == "qdeploy.compare/1"
    labels = [run["label"] for run in data["runs"]]
    assert len(labels) == 2 and [run["dir"] for run in data["runs"]] == [str(d) for d in two_runs]
    shared = _find(data["rows"], "ort-dynamic", "ort-cpu")
    assert shared["by_run"][labels[0]]["p50"] == pytest.approx(51.88)
    assert shared["by_run"][labels[1]]["p50"] == pytest.approx(30.0)
    assert shared["by_run"][labels[1]]["noisy"] is True and shared["by_run"][labels[0]]["noisy"] is False
    assert shared["by_run"][labels[1]]["quality_value"] == pytest.approx(0.9899)
    assert shared["by_run"][labels[1]]["quality_delta"] == pytest.approx(-0.0101)
    only_b = _find(data["rows"], "nncf-ptq<b>", "openvino-cpu")
    assert only_b["by_run"][labels[0]] is None and only_b["by_run"][labels[1]]["p50"] == pytest.approx(20.0)
    # One row per (variant, runtime, batch, seq_len); batch 1 rows sort before batch 8.
    assert len(data["rows"]) == 4 and data["rows"][-1]["batch"] == 8


def test_speedups_are_copied_not_recomputed(tmp_path, two_runs):
    data, md, _ = _compare(tmp_path, two_runs)
    a, b = (run["label"] for run in data["runs"])
    row = _find(data["rows"], "ort-dynamic", "ort-cpu")
    assert row["by_run"][a]["speedup_vs_fp32"] == 1.273
    assert row["by_run"][b]["speedup_vs_fp32"] == 1.777     # not 40.5 / 30.0 = 1.35
    assert "1.78×" in md and "1.35×" not in md


def test_labels_from_cpu_and_threads(tmp_path, two_runs):
    data, md, page = _compare(tmp_path, two_runs)
    labels = [run["label"] for run in data["runs"]]
    assert labels == ["AMD EPYC · 2 threads", "Intel Xeon Platinum 8375C · 4 threads"]
    assert labels[1] in md and labels[1] in page


def test_library_and_commit_differences(tmp_path, two_runs):
    data, md, page = _compare(tmp_path, two_runs)
    a, b = (run["label"] for run in data["runs"])
    diffs = data["library_differences"]
    assert diffs["torch"] == {a: "2.13.0+cpu", b: "2.12.1+cpu"}
    assert diffs["qdeploy_commit"] == {a: "8056208", b: "cc9d3a3"}
    assert "onnxruntime" not in diffs and "qdeploy" not in diffs   # same version everywhere
    assert "| torch | 2.13.0+cpu | 2.12.1+cpu |" in md
    assert "2.12.1+cpu" in page


def test_same_model_gives_no_warning(tmp_path, two_runs):
    data, md, _ = _compare(tmp_path, two_runs)
    assert data["warnings"] == []
    assert "Warning" not in md


def test_different_model_and_task_warn_but_still_merge(tmp_path):
    runs = [_write(tmp_path, "emb", _report()),
            _write(tmp_path, "cls", _report(sha="2c" * 32, task="text-classification"))]
    data, md, page = _compare(tmp_path, runs)
    assert any("different models" in w for w in data["warnings"])
    assert any("different tasks" in w and "text-classification" in w for w in data["warnings"])
    assert len(data["rows"]) == 3 and all(None not in r["by_run"].values() for r in data["rows"])
    assert md.index("Warning") < md.index("## Results")
    assert 'class="warn"' in page and "different models" in page


def test_labels_unique_when_cpu_and_threads_equal(tmp_path):
    runs = [_write(tmp_path, name, _report()) for name in ("monday", "tuesday")]
    data, _, _ = _compare(tmp_path, runs)
    assert [run["label"] for run in data["runs"]] == ["monday", "tuesday"]


def test_clashing_labels_get_the_directory_name(tmp_path):
    runs = [_write(tmp_path, "a1", _report(threads=2)), _write(tmp_path, "a2", _report(threads=2)),
            _write(tmp_path, "b", _report(threads=8))]
    data, _, _ = _compare(tmp_path, runs)
    labels = [run["label"] for run in data["runs"]]
    assert labels == ["2 threads (a1)", "2 threads (a2)", "8 threads"]
    assert all(set(row["by_run"]) == set(labels) for row in data["rows"])


def test_same_directory_names_still_unique(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    runs = [_write(tmp_path / "x", "run", _report()), _write(tmp_path / "y", "run", _report())]
    data, _, _ = _compare(tmp_path, runs)
    labels = [run["label"] for run in data["runs"]]
    assert len(set(labels)) == 2


def test_fewer_than_two_runs_is_a_config_error(tmp_path, two_runs):
    with pytest.raises(ConfigError, match="at least 2"):
        compare_runs(two_runs[:1], tmp_path / "cmp")
    with pytest.raises(ConfigError):
        compare_runs([], tmp_path / "cmp")
    with pytest.raises(ConfigError):
        compare_runs([two_runs[0], two_runs[0]], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_dir_without_report_is_an_input_error(tmp_path, two_runs):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(InputError):
        compare_runs([two_runs[0], empty], tmp_path / "cmp")
    with pytest.raises(InputError):
        compare_runs([two_runs[0], tmp_path / "does-not-exist"], tmp_path / "cmp")
    bad = _write(tmp_path, "other-schema", dict(_report(), schema="something/1"))
    with pytest.raises(InputError):
        compare_runs([two_runs[0], bad], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_non_empty_out_is_refused(tmp_path, two_runs):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match="not empty"):
        compare_runs(two_runs, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    empty = tmp_path / "empty-out"
    empty.mkdir()
    assert compare_runs(two_runs, empty).is_file()


def test_html_is_self_contained_and_escaped(tmp_path, two_runs):
    _, _, page = _compare(tmp_path, two_runs)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<svg") == 2                      # one speed-up chart per (batch, seq_len)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower() and "url(" not in page
    assert "nncf-ptq<b>" not in page and "nncf-ptq&lt;b&gt;" in page
    # One bar per run that measured the combination: 2 runs × 2 rows + 1 + 1 at batch 1 and 2 at batch 8.
    assert len(re.findall(r"<rect class=\"r\d\"", page)) == 7
    assert "1.78×" in page and "—" in page
    for field in ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "avx512_vnni", "AVX2"):
        assert field in page
    assert "amx" not in page.split("<h2>Machines</h2>")[1].split("<h2>")[0]   # only true ISA flags


def test_markdown_has_a_table_per_shape(tmp_path, two_runs):
    data, md, _ = _compare(tmp_path, two_runs)
    a, b = (run["label"] for run in data["runs"])
    assert "### batch 1 · seq_len 128" in md and "### batch 8 · seq_len 128" in md
    headers = [line for line in md.splitlines() if line.startswith("| variant | runtime |")]
    assert len(headers) == 2
    assert f"{a} p50 ms" in headers[0] and f"{b} speed-up" in headers[0]
    row = next(line for line in md.splitlines() if line.startswith("| nncf-ptq&lt;b> |"))
    assert row.count("—") == 3                          # run A did not measure it
    assert "30.00 ⚠" in md and "0.9899 (Δ -0.0101)" in md
    for block in md.split("### ")[1:]:
        table = [line for line in block.splitlines() if line.startswith("|")]
        assert len({line.count("|") for line in table}) == 1


def test_quality_uses_the_same_metric_across_runs(tmp_path):
    acc = {"metric": "accuracy", "value": 0.8865, "fp32_value": 0.8865, "delta": 0.0}
    agree = {"metric": "agreement", "value": 1.0, "fp32_value": 1.0, "delta": 0.0}
    with_eval = _report(task="text-classification", results=[
        dict(_row("pytorch-fp32", "torch", 60.0, 1.0, 0.0), quality=acc, qualities=[agree, acc])])
    without = copy.deepcopy(with_eval)
    without["results"][0].update(quality=agree, qualities=[agree])
    data, _, _ = _compare(tmp_path, [_write(tmp_path, "a", with_eval), _write(tmp_path, "b", without)])
    cells = data["rows"][0]["by_run"]
    assert cells["a"]["quality_metric"] == "accuracy" and cells["a"]["quality_value"] == pytest.approx(0.8865)
    assert cells["b"]["quality_metric"] == "agreement"   # b has no accuracy: falls back to its own


def _variant(name, fmt, activations, *, why="", method="weight-int8"):
    """A report.json variant record as work.variant_record writes it: the plan and its summary."""
    from qdeploy.layer_plan import LayerPlan, LayerScheme

    scheme = LayerScheme("int8", activations, "block" if activations != "float" else "per-channel",
                         32 if activations != "float" else None, True, why)
    plan = LayerPlan(method, fmt, {f"layers.{i}.fc": scheme for i in range(4)})
    return {"name": name, "format": fmt, "method": method, "layer_plan": plan.to_dict(),
            "plan_summary": plan.summary()}


def test_each_variants_plan_is_listed_and_runs_that_differ_say_how(tmp_path):
    """One method on one format in two runs (another qdeploy, another ONNX Runtime): a row merged by name is only
    the same thing if the plans agree, so the comparison lists each run's plan and says how they differ."""
    a, b = _report(), _report(cpu="Intel Xeon", commit="cc9d3a3")
    a["variants"] = [_variant("weight-int8", "onnx", "int8-dynamic-block"), _variant("w8-ov", "openvino", "float")]
    b["variants"] = [_variant("weight-int8", "onnx", "float"), _variant("w8-ov", "openvino", "float", why="same"),
                     {"name": "fp16", "format": "onnx", "method": "fp16"}]  # no plan: nothing listed
    data, md, page = _compare(tmp_path, [_write(tmp_path, "a", a), _write(tmp_path, "b", b)])
    first, second = (run["label"] for run in data["runs"])
    plans = data["plans"]
    assert [(v["run"], v["variant"]) for v in plans["variants"]] == [
        (first, "weight-int8"), (first, "w8-ov"), (second, "weight-int8"), (second, "w8-ov")]
    assert plans["variants"][0]["plan_summary"] == "w8 block 32 / a int8-dynamic-block, 4/4 layers quantized"
    # only the ONNX pair differs: the OpenVINO plans differ in a reason, not in what was done
    assert plans["differences"] == [{"method": "weight-int8", "format": "onnx", "runs": [first, second],
                                     "variants": ["weight-int8", "weight-int8"], "differences": [
                                         "activations int8-dynamic-block vs float on 4 layers",
                                         "granularity block 32 vs per-channel on 4 layers"]}]
    section = md.split("## Layer plans")[1]
    assert f"| {second} | w8-ov | openvino | w8 per-channel / a float, 4/4 layers quantized |" in section
    assert (f"- weight-int8 (onnx): weight-int8 in {first} vs weight-int8 in {second}: activations "
            "int8-dynamic-block vs float on 4 layers; granularity block 32 vs per-channel on 4 layers") in section
    assert "<h2>Layer plans</h2>" in page and "activations int8-dynamic-block vs float on 4 layers" in page
    same = _report()
    same["variants"] = a["variants"]
    data, md, _ = _compare(tmp_path / "same", [_write(tmp_path, "a2", a), _write(tmp_path, "b2", same)])
    assert data["plans"]["differences"] == [] and "did the same to the layers in every run" in md


def test_runs_without_plans_show_no_plan_section(tmp_path, two_runs):
    data, md, page = _compare(tmp_path, two_runs)
    assert data["plans"] == {"variants": [], "differences": []}
    assert "Layer plans" not in md and "Layer plans" not in page
