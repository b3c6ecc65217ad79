"""The HTML report's reading order and the fields added with the recommendation (intervals, busy rows, verdicts).

The report is the one benchmarks/report_screenshots.py renders, so the screenshots and these tests see one page.
"""
from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest

from qdeploy.report.compare import render_compare_html
from qdeploy.report.html import render_html
from qdeploy.report.plot_svg import _CHAR_W

ROOT = Path(__file__).resolve().parents[1]


def _screenshots_module():
    spec = importlib.util.spec_from_file_location("report_screenshots", ROOT / "benchmarks" / "report_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sample():
    return _screenshots_module().sample_report()


@pytest.fixture()
def report(sample):
    return copy.deepcopy(sample)


def _headings(page: str) -> list[str]:
    return re.findall(r"<h2>([^<]+)</h2>", page)


def _section(page: str, title: str) -> str:
    return page.split(f"<h2>{title}</h2>", 1)[1].split("<h2>", 1)[0]


def _scatters(page: str) -> list[str]:
    return [svg for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S) if "<circle" in svg]


def test_reading_order(report):
    headings = _headings(render_html(report))
    assert headings[:4] == ["Recommendation", "Summary", "Quality versus speed", "Quality by variant"]
    assert headings.index("Results") < headings.index("Machine")
    assert headings[-3:] == ["Model", "Machine", "Settings"]  # how it was measured comes last


def test_recommendation_headline_reasons_and_threads(report):
    section = _section(render_html(report), "Recommendation")
    assert section.count('<div class="rec">') == 2                      # one per batch
    assert "ship nncf-ptq on openvino-cpu: 11.69x PyTorch fp32 (11.10-12.20)" in section
    assert "ort-static was as fast but lost 1.0 point of accuracy (p = 0.03)" in section
    assert "Statistically tied with ort-dynamic on ort-cpu." in section
    assert "Judged on accuracy, tolerance 1 point" in section
    assert "machine local" not in section                               # one machine: not worth naming


def test_threads_choice_is_stated_under_the_title(report):
    page = render_html(report)
    note = page.index("Threads: 1 — machine busy (load 3.2 on 2 cores): 1 thread took 0.44 s, 2 threads 3.8 s")
    assert page.index('<p class="sub">') < note < page.index("<h2>Recommendation</h2>")
    del report["recommendation"]
    assert "Threads: 1 — machine busy" in render_html(report)


def test_recommendation_without_headline_is_composed(report):
    choice = report["recommendation"]["choices"][0]
    del choice["headline"]
    chosen = next(r for r in report["results"] if (r["variant"], r["runtime"], r["batch"]) ==
                  (choice["variant"], choice["runtime"], choice["batch"]))
    chosen["busy_reasons"] = ["other processes used 50 % of the CPU (> 25 %)"]
    section = _section(render_html(report), "Recommendation")
    assert ("ship nncf-ptq on openvino-cpu: 11.69× PyTorch fp32 (11.10–12.20), no significant loss (p = 0.81)"
            in section)
    assert "⚠ measured while the machine was busy: other processes used 50 % of the CPU" in section


def test_summary_intervals_verdicts_and_busy_footnote(report):
    section = _section(render_html(report), "Summary")
    batch1 = section.split("<h3>")[1]
    assert "11.69×<small>11.10–12.20</small>" in batch1                  # speed-up and its 95 % interval
    assert "1.00×</td>" in batch1                                        # the baseline has no interval to show
    assert "Δ -1.04 pt (-1.44 to -0.74)" in batch1                      # paired delta, in points
    assert '<small class="bad verdict">loss beyond 1 point (p = 0.03)</small>' in batch1
    assert '<small class="ok verdict">no significant loss (p = 0.81)</small>' in batch1
    assert "★ recommended" in batch1
    busy = re.search(r'<span class="warn" title="([^"]+)">⚠ busy<sup>1</sup></span>', batch1)
    assert busy and busy.group(1) == "load average 3.1 &gt; 2 cores; cv 24 % &gt; 10 %"
    assert "<li>ort-static / ort-cpu: measured while the machine was busy (load average 3.1 &gt; 2 cores" in batch1


def test_results_table_keeps_secondary_columns_folded(report):
    section = _section(render_html(report), "Results")
    main, details = section.split("<details>", 1)
    main_header = re.search(r"<thead>(.*?)</thead>", main).group(1)
    for column in ("p50 ms", "speed-up", "memory MB", "load s", "size MB", "agreement", "accuracy"):
        assert f"<th>{column}</th>" in main_header
    for column in ("p90 ms", "p99 ms", "peak RSS", "cv", "precision"):
        assert column not in main_header
    assert "<th>process peak RSS MB</th>" in details and "<th>p99 ms</th>" in details
    assert "before: load 3.1, steal 0.0 %, others 12.0 %" in details
    row = next(r for r in main.split("<tr>") if "ort-dynamic" in r)
    assert '<td class="num">48</td>' in row and '<td class="num">0.15</td>' in row   # rss_delta_mb, load_s


def test_quality_by_variant(report):
    section = _section(render_html(report), "Quality by variant")
    assert "<th>variant</th><th>runtime</th><th>agreement</th><th>accuracy</th>" in section
    assert "0.8761 (0.8551–0.8971)" in section and "Δ -1.04 pt (-1.44 to -0.74)" in section
    assert "<strong>accuracy</strong>: accuracy on a TSV" in section   # what each metric measures


def test_settings_and_machine_are_readable(report):
    page = render_html(report)
    tail = page[page.index("<h2>Model</h2>"):]
    assert not re.search(r"[{\[]'", tail)                              # no Python reprs
    settings = _section(page, "Settings")
    assert "<li><strong>reason</strong> machine busy (load 3.2 on 2 cores)" in settings
    assert "<td>666ff7b61709</td>" in settings
    machine = _section(page, "Machine")
    assert "avx512_bf16 (not: amx)" in machine and "qdeploy commit" in machine


def _boxes(svg: str) -> list[tuple[float, float, float, float]]:
    boxes = []
    for x, y, anchor, text in re.findall(r'<text class="plabel" x="([\d.-]+)" y="([\d.-]+)" text-anchor="(\w+)" '
                                         r'dominant-baseline="middle">([^<]+)</text>', svg):
        width = _CHAR_W * len(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
        x0 = float(x) if anchor == "start" else float(x) - width
        boxes.append((x0, float(y) - 7, x0 + width, float(y) + 7))
    return boxes


def test_pareto_plot_error_bars_units_marks_and_key(report):
    page = render_html(report)
    svg = _scatters(page)[0]
    assert svg.count('class="err"') == 6 + 5          # quality bars on all six; the baseline's speed interval is 1-1
    assert "Δ accuracy vs PyTorch fp32 (points)" in svg
    assert re.search(r">\+0\.5</text>", svg) and re.search(r">-1\.5</text>", svg)   # -1.04 points, not -0.0104
    assert svg.count('class="ring chosen"') == 1 and svg.count('class="ring busy"') == 1
    figure = re.search(r'<figure class="pareto">.*?</figure>', page, flags=re.S).group(0)
    assert "recommended" in figure and "measured while the machine was busy" in figure
    key = re.findall(r"<li>(.*?)</li>", figure.split('<ol class="key">')[1])
    assert len(key) == 6 and key[4].startswith("<strong>nncf-ptq / openvino-cpu</strong> 11.69× (11.10–12.20)")


def test_pareto_labels_do_not_overlap_when_points_crowd(report):
    rows = [r for r in report["results"] if r["batch"] == 1]
    for index in range(8):  # eight more variants at almost the same speed and accuracy
        twin = copy.deepcopy(rows[4])
        twin["variant"] = f"crowded-variant-{index}"
        twin["speedup_vs_fp32"] += 0.01 * index
        rows.append(twin)
    report["results"] = rows
    svg = _scatters(render_html(report))[0]
    boxes = _boxes(svg)
    assert len(boxes) == len(rows)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_pareto_for_a_lower_is_better_metric():
    def row(variant, speedup, ppl):
        quality = {"metric": "perplexity", "value": ppl, "fp32_value": 12.0, "delta": ppl - 12.0,
                   "gain": 12.0 - ppl}
        return {"variant": variant, "runtime": "ort-cpu", "batch": 1, "seq_len": 128, "speedup_vs_fp32": speedup,
                "latency_ms": {"p50": 10.0 / speedup}, "quality": quality, "qualities": [quality]}

    page = render_html({"results": [row("pytorch-fp32", 1.0, 12.0), row("int8", 2.0, 12.6),
                                    row("int4", 1.8, 13.5)]})
    svg = _scatters(page)[0]
    assert "Δ perplexity vs fp32 (reversed: up is better)" in svg
    pareto = {t.split(":")[0] for c, t in re.findall(r'<circle class="([^"]+)"[^>]*><title>([^<]*)</title>', svg)
              if "pareto" in c}
    assert pareto == {"pytorch-fp32 / ort-cpu", "int8 / ort-cpu"}       # int4 is slower and worse
    ys = {t.split(":")[0]: float(y) for y, t in re.findall(r'cy="([\d.]+)" r="5"><title>([^<]*)</title>', svg)}
    assert ys["pytorch-fp32 / ort-cpu"] < ys["int8 / ort-cpu"] < ys["int4 / ort-cpu"]   # worse is lower
    assert "Δ +0.60</small>" in page                                    # perplexity stays in its own units


def test_page_with_every_field_is_self_contained(report):
    page = render_html(report)
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert not re.search(r'(src|href)="', page)


def test_old_reports_without_the_new_fields(report):
    for row in report["results"]:
        for key in ("speedup_interval", "busy", "busy_reasons", "load", "rounds", "rss_delta_mb", "load_s"):
            row.pop(key, None)
        for quality in row["qualities"]:
            for key in ("interval", "paired", "verdict", "n"):
                quality.pop(key, None)
    del report["recommendation"], report["settings"]["threads_choice"]
    page = render_html(report)
    assert "<h2>Recommendation</h2>" not in page and _headings(page)[0] == "Summary"
    assert "⚠ busy" not in page and 'class="err"' not in _scatters(page)[0]
    assert "Δ -1.04 pt</small>" in _section(page, "Summary")


def test_compare_legend_lists_only_drawn_runs():
    def run(label):
        return {"label": label, "dir": label, "machine": {}, "settings": {}, "model": {}, "created": None}

    cell = {"p50": 2.0, "speedup_vs_fp32": 3.0, "quality_metric": None, "quality_value": None,
            "quality_delta": None, "noisy": False}
    data = {"runs": [run("a"), run("b"), run("c")], "warnings": [], "library_differences": {},
            "rows": [{"variant": "v", "runtime": "ort-cpu", "batch": 1, "seq_len": 8,
                      "by_run": {"a": cell, "b": None, "c": {**cell, "speedup_vs_fp32": None}}}]}
    page = render_compare_html(data)
    assert re.findall(r'<span class="sw (r\d)"></span>([^<]*)', page) == [("r0", "a")]
    data["rows"] = []
    assert '<span class="sw' not in render_compare_html(data)


def test_two_machines_recommendation_matches_the_labelled_rows(report):
    rows = [r for r in report["results"] if r["batch"] == 1]
    other = copy.deepcopy(rows)
    for row in other:
        row["machine"] = "c7g"
    report["results"] = rows + other
    report["machines"] = {"local": report["machine"], "c7g": {**report["machine"], "cpu_model": "Graviton3"}}
    second = {**copy.deepcopy(report["recommendation"]["choices"][0]), "machine": "c7g", "variant": "ort-dynamic",
              "runtime": "ort-cpu", "headline": "ship ort-dynamic on ort-cpu"}
    report["recommendation"]["choices"] = [report["recommendation"]["choices"][0], second]
    page = render_html(report)
    recommendation = _section(page, "Recommendation")
    assert "<h3>machine local · batch 1 · seq_len 64</h3>" in recommendation
    assert "<h3>machine c7g · batch 1 · seq_len 64</h3>" in recommendation
    summary = _section(page, "Summary")
    marked = [r for r in summary.split("<tr>") if "★ recommended" in r]
    assert len(marked) == 2
    assert "nncf-ptq @ local" in marked[0] and "ort-dynamic @ c7g" in marked[1]
    assert "<h3>c7g</h3>" in _section(page, "Machines") and "Graviton3" in page
