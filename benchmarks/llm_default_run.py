"""The default generative run end to end, as a user types it (`qdeploy run --task text-generation`: SmolLM2-135M,
every default method and runtime), with its peak memory: the resident memory of the run's whole process tree, sampled
every 0.2 s. Fails (exit 1) when the peak passes the bound, when the engines (`ort-genai`, `openvino-genai`) were not
measured, or when the run fails; prints the recommendation for batch 1 and the rows.

    .venv/bin/python benchmarks/llm_default_run.py --out runs/llm-default --bound-gb 3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("ort-genai", "openvino-genai")


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / f"llm-default-{int(time.time())}"))
    parser.add_argument("--bound-gb", type=float, default=3.0)
    parser.add_argument("extra", nargs="*", help="more `qdeploy run` flags, after --")
    args = parser.parse_args()
    command = [sys.executable, "-m", "qdeploy", "run", "--task", "text-generation", "--out", args.out, *args.extra]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak, done = psutil.Process(child.pid), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(watched))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    out, err = child.communicate()
    done.set()
    sampler.join()
    minutes = (time.monotonic() - started) / 60
    peak_gb = peak[0] / 2**30
    print(err[-4000:], file=sys.stderr)
    failures = []
    if child.returncode:
        failures.append(f"the run exited {child.returncode}")
    report_path = Path(args.out) / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        measured = {row["runtime"] for row in report["results"]}
        missing = [engine for engine in ENGINES if engine not in measured]
        if missing:
            failures.append(f"not measured on {', '.join(missing)}")
        for choice in (report.get("recommendation") or {}).get("choices", []):
            print(f"batch {choice['batch']}: {choice['headline']}")
        for row in report["results"]:
            print(f"{row['variant']:>20} {row['runtime']:>15} b{row['batch']} speed-up {row.get('speedup_vs_fp32')}")
        print(f"CPU: {report['machine'].get('cpu_model')}")
    else:
        failures.append("no report was written")
    print(f"peak resident memory of the run's process tree: {peak_gb:.2f} GB (bound {args.bound_gb} GB); "
          f"{minutes:.1f} minutes")
    if peak_gb > args.bound_gb:
        failures.append(f"peak memory {peak_gb:.2f} GB is above {args.bound_gb} GB")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
