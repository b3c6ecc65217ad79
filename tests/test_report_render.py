"""Tests for the Markdown and HTML report renderers.

A hand-built report of the qdeploy.report/1 schema, so every optional field can be varied.
"""
from __future__ import annotations

import copy
import re

import pytest

from qdeploy.report.html import render_html
from qdeploy.report.markdown import render_markdown


def _row(variant, runtime, precision, p50, p90, speedup, delta, *, batch=1, seq_len=128,
         size=86.7, noisy=False, cv=0.03, sts_delta=None):
    quality = None if delta is None else {"metric": "cosine", "value": 1.0 + delta,
                                          "fp32_value": 1.0, "delta": delta}
    qualities = [quality] if quality else []
    if sts_delta is not None:
        qualities.append({"metric": "stsb_spearman", "value": 82.03 + sts_delta,
                          "fp32_value": 82.03, "delta": sts_delta})
    return {"variant": variant, "runtime": runtime, "format": variant.split("-")[0],
            "precision": precision, "batch": batch, "seq_len": seq_len,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p90 * 1.2, "mean": p50, "stdev": 0.5},
            "throughput_per_s": 1000.0 * batch / p50, "speedup_vs_fp32": speedup,
            "size_mb": size, "peak_rss_mb": 1200.5, "load_s": 0.8, "iterations": 40,
            "cv": cv, "noisy": noisy, "quality": quality, "qualities": qualities}


@pytest.fixture()
def report():
    return {
        "schema": "qdeploy.report/1", "qdeploy_version": "0.1.0",
        "created": "2026-11-24T05:00:00+00:00",
        "machine": {"cpu_model": "AMD EPYC 9B14", "cores_physical": 2, "cores_logical": 2,
                    "memory_gb": 23.4,
                    "isa": {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": False,
                            "avx512_bf16": False, "amx": False},
                    "onednn_isa_cap": "AVX512_CORE_BF16", "os": "Linux-6.1 x86_64",
                    "python": "3.11.7",
                    "libraries": {"torch": "2.13.0", "onnxruntime": "1.32.0", "openvino": "2026.4.1"},
                    "execution_providers": ["CPUExecutionProvider"]},
        "model": {"source": "sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction",
                  "sha256": "ab" * 32},
        "settings": {"threads": 2, "warmup": 5, "min_reps": 20, "min_time_s": 1.0},
        "variants": [
            {"name": "onnx-fp32", "format": "onnx", "precision": "fp32", "method": None,
             "parent": None, "size_mb": 86.7, "path": "artifacts/onnx-fp32"},
            {"name": "onnx-int8-dynamic", "format": "onnx", "precision": "int8", "method": "dynamic",
             "parent": "onnx-fp32", "size_mb": 22.1, "path": "artifacts/onnx-int8-dynamic"},
            {"name": "openvino-int8<b>", "format": "openvino", "precision": "int8", "method": "ptq",
             "parent": "onnx-fp32", "size_mb": 23.4, "path": "artifacts/ov"},
        ],
        "skipped": [{"variant": "openvino-bf16", "runtime": "openvino-cpu",
                     "reason": "CPU has no avx512_bf16 or AMX"}],
        "results": [
            _row("pytorch-fp32", "torch", "fp32", 20.1, 21.0, 1.0, 0.0, sts_delta=0.0),
            _row("onnx-fp32", "onnxruntime-cpu", "fp32", 15.0, 16.0, 1.34, 0.0, sts_delta=0.0),
            _row("onnx-int8-dynamic", "onnxruntime-cpu", "int8", 8.0, 9.5, 2.5125, -0.0123,
                 size=22.1, noisy=True, cv=0.12, sts_delta=-0.13),
            # Dominated by onnx-int8-dynamic (slower and less accurate).
            _row("openvino-int8<b>", "openvino-cpu", "int8", 12.0, 13.0, 1.675, -0.02, size=23.4),
            _row("pytorch-fp32", "torch", "fp32", 150.0, 160.0, 1.0, 0.0, batch=8),
            _row("onnx-int8-dynamic", "onnxruntime-cpu", "int8", 60.0, 70.0, None, None, batch=8),
        ],
    }


# --- Markdown ---------------------------------------------------------------------------

def test_markdown_header_machine_and_settings(report):
    md = render_markdown(report)
    assert md.startswith("# ")
    title = md.splitlines()[0]
    assert "sentence-transformers/all-MiniLM-L6-v2" in title and "feature-extraction" in title
    assert "AMD EPYC 9B14" in md and "23.4 GB" in md
    isa_line = next(line for line in md.splitlines() if "ISA:**" in line)
    assert "avx512_vnni" in isa_line and "amx" not in isa_line and "avx_vnni" not in isa_line
    assert "AVX512_CORE_BF16" in md
    libs = next(line for line in md.splitlines() if "Libraries" in line)
    assert "torch 2.13.0" in libs and "onnxruntime 1.32.0" in libs and "openvino 2026.4.1" in libs
    assert "**threads:** 2" in md and "**min_reps:** 20" in md


def test_markdown_results_tables(report):
    md = render_markdown(report)
    assert "### batch 1 · seq_len 128" in md and "### batch 8 · seq_len 128" in md
    assert md.index("### batch 1 ") < md.index("### batch 8 ")
    for variant in ("pytorch-fp32", "onnx-fp32", "onnx-int8-dynamic"):
        assert f"| {variant} |" in md
    assert "2.51×" in md and "1.34×" in md and "1.68×" in md   # 2 decimals
    assert "| cosine | stsb_spearman |" in md
    assert "0.9877 (Δ -0.0123)" in md                        # cosine: 4 decimals
    assert "81.90 (Δ -0.13)" in md                            # percent scale: 2 decimals
    assert "⚠ cv 12%" in md
    int8_row = next(l for l in md.splitlines() if l.startswith("| onnx-int8-dynamic |") and "⚠" in l)
    assert "| 8.00 | 9.50 |" in int8_row and "| 22.1 |" in int8_row
    # Every table row has as many cells as its header.
    for block in md.split("### ")[1:]:
        table = [l for l in block.split("\n## ")[0].splitlines() if l.startswith("|")]
        assert len({l.replace("\\|", "").count("|") for l in table}) == 1


def test_markdown_quality_by_variant(report):
    md = render_markdown(report)
    section = md[md.index("## Quality by variant"):].split("\n## ")[0]
    header = next(l for l in section.splitlines() if l.startswith("| metric |"))
    assert "pytorch-fp32 (torch)" in header and "onnx-int8-dynamic" in header
    assert "0.9877 (Δ -0.0123)" in section and "81.90 (Δ -0.13)" in section


def test_markdown_skipped_and_escaping(report):
    md = render_markdown(report)
    skipped = md[md.index("## Skipped"):]
    assert "openvino-bf16" in skipped and "openvino-cpu" in skipped
    assert "CPU has no avx512_bf16 or AMX" in skipped
    assert "openvino-int8<b>" not in md and "openvino-int8&lt;b>" in md
    report["results"][0]["variant"] = "a|b"
    assert "a\\|b" in render_markdown(report)


# --- HTML -------------------------------------------------------------------------------

def test_html_is_self_contained(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<svg" in page and "<style>" in page
    assert "http://" not in page and "https://" not in page and "//" not in page.replace("://", "")
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page


def test_html_content(report):
    page = render_html(report)
    for variant in ("pytorch-fp32", "onnx-fp32", "onnx-int8-dynamic", "openvino-int8&lt;b&gt;"):
        assert variant in page
    assert "AMD EPYC 9B14" in page and "AVX512_CORE_BF16" in page and "torch 2.13.0" in page
    assert "2.51×" in page and "1.34×" in page
    assert "20.10 ms (p90 21.00)" in page            # latency bar label
    assert "0.9877<small>Δ -0.0123</small>" in page and "⚠ cv 12%" in page
    assert "CPU has no avx512_bf16 or AMX" in page and "openvino-bf16" in page
    assert page.count("<svg") == 2 + 2 + 1           # latency and scatter per shape, one size chart
    assert "86.7 MB" in page and "22.1 MB" in page


def test_html_escapes_report_strings(report):
    report["model"]["source"] = "<script>alert(1)</script>"
    page = render_html(report)
    assert "<b>" not in page and "openvino-int8&lt;b&gt;" in page
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_html_pareto_front(report):
    page = render_html(report)
    charts = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    scatters = [c for c in charts if "<circle" in c]
    assert len(scatters) == 2                          # one per (batch, seq_len)
    circles = re.findall(r'<circle class="([^"]+)"[^>]*><title>([^<]*)</title>', scatters[0])
    pareto = {title.split(":")[0] for css, title in circles if "pareto" in css.split()}
    others = {title.split(":")[0] for css, title in circles if "pareto" not in css.split()}
    # pytorch-fp32 (1.00x, 0) is dominated by onnx-fp32 (1.34x, 0): same quality, faster.
    assert pareto == {"onnx-fp32 / onnxruntime-cpu", "onnx-int8-dynamic / onnxruntime-cpu"}
    assert others == {"pytorch-fp32 / torch", "openvino-int8&lt;b&gt; / openvino-cpu"}
    line = re.search(r'<polyline class="pareto-line" points="([^"]+)"', scatters[0]).group(1)
    xs = [float(point.split(",")[0]) for point in line.split()]
    assert len(xs) == 2 and xs == sorted(xs)           # front drawn left to right
    assert scatters[0].count('class="plabel"') == 4    # every point is labelled
    # The batch-8 chart only plots the row that has both a speed-up and a quality delta.
    assert scatters[1].count("<circle") == 1
    assert "speed-up vs PyTorch fp32" in scatters[0]
    assert "Δ cosine vs PyTorch fp32 (points)" in scatters[0]          # a 0..1 score moves in points


def test_pareto_helper():
    from qdeploy.report.plot_svg import _pareto as pareto
    points = [(1.0, 0.0), (2.0, -0.01), (1.5, -0.02), (2.0, -0.01), (0.9, 0.0)]
    assert pareto(points) == {0, 1, 3}


@pytest.mark.parametrize("render", [render_markdown, render_html])
def test_empty_and_legacy_reports_do_not_crash(render, report):
    assert "nothing to show" in render({"results": []}).lower() or \
        "no benchmark results" in render({"results": []}).lower()
    assert "no benchmark results to show" in render({}).lower()
    legacy = copy.deepcopy(report)
    del legacy["machine"]["isa"], legacy["settings"], legacy["skipped"], legacy["variants"]
    for row in legacy["results"]:
        for key in ("qualities", "latency_ms", "noisy", "peak_rss_mb"):
            row.pop(key, None)
        row["quality"] = None
    legacy["results"].append({"variant": "bare"})
    out = render(legacy)
    assert "bare" in out and "pytorch-fp32" in out
