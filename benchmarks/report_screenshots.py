"""Screenshots of report.html in headless Chromium, to look at the page as a reader does.

    .venv/bin/python benchmarks/report_screenshots.py                 # a built report with every optional field
    .venv/bin/python benchmarks/report_screenshots.py --run runs/x    # runs/x/report.html as written by the run
    .venv/bin/python benchmarks/report_screenshots.py --run runs/x --rerender   # runs/x/report.json, rendered now

Writes top.png (the first 1280x900 of the page), pareto.png (the first speed-up versus quality plot, rendered alone
in a page of its own because Chromium's --screenshot takes the whole window) and report.html into --out, then says
whether any table is wider than its box at 1280 px, that is whether a column hides behind a horizontal scroll.
Needs Chromium: `apt-get install -y chromium`.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from qdeploy.report.html import render_html

ROOT = Path(__file__).resolve().parents[1]
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Marks each table box the page would scroll sideways, in the DOM that --dump-dom prints. Only the probe copy
# gets this script; the report itself stays script-free.
_PROBE = """<script>window.addEventListener('load', () => {
  const heading = (d, tag) => { for (let n = d; n; n = n.previousElementSibling || n.parentElement)
    if (n.tagName === tag) return n.textContent; return ''; };
  const wide = [...document.querySelectorAll('div.scroll')].filter(d => d.scrollWidth > d.clientWidth + 1);
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify(wide.map(d => [heading(d, 'H2'), heading(d, 'H3'), d.scrollWidth, d.clientWidth]));
  document.body.appendChild(out); });</script>"""


def _row(variant, runtime, precision, p50, speedup, interval, agreement, accuracy, *, batch=1, size=86.8,
         busy_reasons=None, paired_p=0.81, qualifies=True, rss=120.0):
    fp32_acc, n = 0.8865, 872

    def quality(metric, value, fp32, low, high, phrase, passed=True):
        return {"metric": metric, "value": value, "fp32_value": fp32, "delta": round(value - fp32, 6),
                "gain": round(value - fp32, 6), "interval": [value - 0.021, min(1.0, value + 0.021)], "n": n,
                "paired": {"delta": round(value - fp32, 6), "low": low, "high": high, "p": paired_p,
                           "test": "exact McNemar", "n": n},
                "verdict": {"qualifies": passed, "phrase": phrase}}

    delta = accuracy - fp32_acc
    phrase = ("no significant loss" if qualifies else "loss beyond 1 point") + f" (p = {paired_p:.2g})"
    row = {"variant": variant, "runtime": runtime, "format": variant.split("-")[0], "precision": precision,
           "batch": batch, "seq_len": 64, "machine": "local",
           "latency_ms": {"p50": p50, "p90": p50 * 1.08, "p99": p50 * 1.4, "mean": p50 * 1.02, "min": p50 * 0.95},
           "throughput_per_s": 1000.0 * batch / p50, "speedup_vs_fp32": speedup, "speedup_interval": interval,
           "speedup_vs_runtime_fp32": None, "size_mb": size, "peak_rss_mb": 920.7, "rss_delta_mb": rss,
           "load_s": 0.15, "iterations": 105, "rounds": 7, "cv": 0.04, "noisy": False,
           "busy": bool(busy_reasons), "busy_reasons": busy_reasons or [],
           "load": {"before": {"load1": 3.1 if busy_reasons else 0.4, "steal_pct": 0.0, "others_cpu_pct": 12.0},
                    "after": {"load1": 2.9 if busy_reasons else 0.5, "steal_pct": 0.1, "others_cpu_pct": 9.0}},
           "what": "model only (tokenized inputs, no tokenization in the timed loop)", "timings": {},
           "qualities": [quality("agreement", agreement, 1.0, agreement - 1.0 - 0.006, min(0.0, agreement - 0.994),
                                 "within tolerance"),
                         quality("accuracy", accuracy, fp32_acc, delta - 0.004, delta + 0.003, phrase, qualifies)]}
    row["quality"] = row["qualities"][-1]
    if variant.endswith("fp32") and variant != "pytorch-fp32":
        row["speedup_vs_runtime_fp32"], row["speedup_vs_runtime_fp32_interval"] = 1.0, [1.0, 1.0]
    elif runtime != "torch":
        base = 3.85 if runtime == "ort-cpu" else 4.2
        row["speedup_vs_runtime_fp32"] = round(speedup / base, 3)
        row["speedup_vs_runtime_fp32_interval"] = [round(interval[0] / base, 3), round(interval[1] / base, 3)]
    return row


def sample_report() -> dict:
    """A report with every field the pipeline may write, with names and numbers like a real SST-2 run."""
    results = [
        _row("pytorch-fp32", "torch", "fp32", 18.1, 1.0, [1.0, 1.0], 1.0, 0.8865, rss=410.0),
        _row("onnx-fp32", "ort-cpu", "fp32", 4.71, 3.85, [3.71, 3.98], 1.0, 0.8865, rss=124.3),
        _row("openvino-fp32", "openvino-cpu", "fp32", 4.29, 4.22, [4.05, 4.31], 1.0, 0.8865, rss=131.0),
        _row("ort-dynamic", "ort-cpu", "int8", 2.01, 9.01, [8.62, 9.4], 0.993, 0.8853, size=22.0, rss=48.2),
        _row("nncf-ptq", "openvino-cpu", "int8", 1.55, 11.69, [11.1, 12.2], 0.995, 0.8876, size=22.4, rss=51.0),
        _row("ort-static", "ort-cpu", "int8", 1.62, 11.2, [9.9, 12.6], 0.982, 0.8761, size=22.1, rss=47.0,
             busy_reasons=["load average 3.1 > 2 cores", "cv 24 % > 10 %"], paired_p=0.03, qualifies=False),
        _row("pytorch-fp32", "torch", "fp32", 96.0, 1.0, [1.0, 1.0], 1.0, 0.8865, batch=8),
        _row("ort-dynamic", "ort-cpu", "int8", 14.2, 6.76, [6.5, 7.0], 0.993, 0.8853, batch=8, size=22.0),
        _row("nncf-ptq", "openvino-cpu", "int8", 13.9, 6.9, [6.6, 7.2], 0.995, 0.8876, batch=8, size=22.4),
    ]
    choice = {"machine": "local", "seq_len": 64, "runtime": "openvino-cpu", "format": "openvino",
              "precision": "int8", "fp32_fallback": False, "vs": "PyTorch fp32", "size_mb": 22.4, "busy": False}
    choices = [
        {**choice, "batch": 1, "variant": "nncf-ptq", "speedup": 11.69, "interval": [11.1, 12.2],
         "quality": {"metric": "accuracy", "value": 0.8876, "delta": 0.0011, "low": -0.002, "high": 0.004, "p": 0.81,
                     "phrase": "no significant loss (p = 0.81)"},
         "headline": "ship nncf-ptq on openvino-cpu: 11.69x PyTorch fp32 (11.10-12.20), accuracy +0.1 point "
                     "(no significant loss, p = 0.81), 22 MB",
         "reasons": ["ort-static was as fast but lost 1.0 point of accuracy (p = 0.03)",
                     "ort-dynamic was 9.01x here: this CPU has AVX-512 VNNI, which OpenVINO's int8 kernels use"],
         "tied_with": []},
        {**choice, "batch": 8, "variant": "nncf-ptq", "speedup": 6.9, "interval": [6.6, 7.2],
         "quality": {"metric": "accuracy", "value": 0.8876, "delta": 0.0011, "low": -0.002, "high": 0.004, "p": 0.81,
                     "phrase": "no significant loss (p = 0.81)"},
         "headline": "ship nncf-ptq on openvino-cpu: 6.90x PyTorch fp32 (6.60-7.20), accuracy +0.1 point "
                     "(no significant loss, p = 0.81), 22 MB",
         "reasons": ["ort-dynamic on ort-cpu is within noise of it (6.76x, 6.50-7.00) and is the simpler install"],
         "tied_with": ["ort-dynamic on ort-cpu"]},
    ]
    machine = {"cpu_model": "AMD EPYC", "cores_physical": 2, "cores_logical": 2, "memory_gb": 23.5,
               "isa": {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": True, "avx512_bf16": True,
                       "amx": False},
               "onednn_isa_cap": None, "os": "Linux-6.18.44-x86_64-with-glibc2.36", "python": "3.11.7",
               "libraries": {"qdeploy": "0.1.0", "torch": "2.13.0+cpu", "onnxruntime": "1.32.0",
                             "openvino": "2026.4.1", "nncf": "3.4.0"},
               "qdeploy_commit": "dab36fb", "execution_providers": ["CPUExecutionProvider"], "gpus": []}
    return {
        "schema": "qdeploy.report/1", "qdeploy_version": "0.1.0", "created": "2026-11-30T17:56:06+00:00",
        "machine": machine, "machines": {"local": machine},
        "model": {"source": "/work/shared/models/minilm-l6-sst2", "task": "text-classification",
                  "sha256": "2cd3c7d25fb5c2ddc179d710282c80f97a44eb29b29568bc505a1e132d68c4cd", "model_type": "bert"},
        "settings": {"threads": 1, "warmup": 5, "min_reps": 20, "min_time_s": 0.5, "cv_threshold": 0.1,
                     "measured": {"model": "model only (tokenized inputs, no tokenization in the timed loop)"},
                     "sessions": ["666ff7b61709"],
                     "threads_choice": {"threads": 1, "reason": "machine busy (load 3.2 on 2 cores): 1 thread took "
                                                                "0.44 s, 2 threads 3.8 s"}},
        "metrics": {"agreement": "share of held-out built-in sentences where the top-1 class equals fp32 PyTorch's",
                    "accuracy": "accuracy on a TSV of sentence and label (e.g. SST-2 dev.tsv)"},
        "variants": [{"name": r["variant"], "size_mb": r["size_mb"]} for r in results[1:6]],
        "skipped": [{"variant": "openvino-bf16", "runtime": "openvino-cpu", "reason": "CPU has no AMX"}],
        "recommendation": {"judged_on": "accuracy", "tolerance": "1 point", "choices": choices},
        "results": results,
    }


def _browser() -> str:
    found = next((shutil.which(name) for name in _BROWSERS if shutil.which(name)), None)
    if not found:
        sys.exit("no Chromium found: apt-get install -y chromium")
    return found


def _chromium(browser: str, page: Path, *args: str) -> str:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--force-device-scale-factor=1", *args, page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        sys.exit(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory holding report.html (default: a built report)")
    parser.add_argument("--rerender", action="store_true",
                        help="render the run's report.json with this checkout's renderer instead")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "report-screenshots")
    args = parser.parse_args()
    if args.run and args.rerender:
        page = render_html(json.loads((args.run / "report.json").read_text(encoding="utf-8")))
    elif args.run:
        page = (args.run / "report.html").read_text(encoding="utf-8")
    else:
        page = render_html(sample_report())
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "report.html"
    report.write_text(page, encoding="utf-8")
    browser = _browser()
    _chromium(browser, report, f"--screenshot={args.out / 'top.png'}", "--window-size=1280,900")
    print(args.out / "top.png")

    figure = re.search(r'<figure class="pareto">.*?</figure>', page, flags=re.S)
    if figure:
        style = re.search(r"<style>.*?</style>", page, flags=re.S)
        points = figure.group(0).count("<li>")
        alone = args.out / "pareto.html"
        alone.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8">{style.group(0) if style else ""}</head>'
                         f'<body style="margin:12px;max-width:none">{figure.group(0)}</body></html>', encoding="utf-8")
        # 760 px of plot (400 high), the caption, then the key in two columns of entries up to two lines high.
        height = 24 + 400 + 70 + 40 * math.ceil(points / 2) + 24
        _chromium(browser, alone, f"--screenshot={args.out / 'pareto.png'}", f"--window-size=800,{height}")
        print(args.out / "pareto.png")
    else:
        print("no Pareto plot in this report (no rows with both a speed-up and a quality delta)")

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        dom = _chromium(browser, probe, "--window-size=1280,900", "--virtual-time-budget=3000", "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    if not found:
        sys.exit("the overflow probe did not run")
    wide = json.loads(html.unescape(found.group(1)))
    print("tables wider than their box at 1280 px:", "none" if not wide else "")
    for section, shape, scroll, box in wide:
        print(f"  {section}{' / ' + shape if shape else ''}: {scroll} px in {box} px")


if __name__ == "__main__":
    main()
