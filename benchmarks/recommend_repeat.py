"""Does the answer hold? The default plan three times back to back: how far the recommendations and the ratios agree.

Each run is a complete `qdeploy run` of the default plan (all-MiniLM-L6-v2) in its own process, as a user would start
it; the runs share one artifact store, so the first one exports and quantizes and the later ones measure the very same
files again (what is tested is the measurement and the decision, not the export). Prints, per batch size, each
run's recommendation, then per variant and
runtime the three median speed-ups with their 95 % intervals, the spread of the medians, and whether every pair of
intervals overlaps.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qdeploy import plan as plans


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench-recommend-repeat")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plan", help="a plan file instead of the default plan")
    args = parser.parse_args()
    out = Path(args.out)
    base = plans.load(args.plan) if args.plan else plans.default()
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({**base.to_dict(), "storage": str((out / "artifacts").resolve())}))
    reports, seconds = [], []
    for i in range(args.runs):
        t0 = time.perf_counter()
        run_dir = out / f"run-{i + 1}"
        proc = subprocess.run([sys.executable, "-m", "qdeploy", "run", "--plan", str(plan_file), "--out", str(run_dir)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"run {i + 1} failed: {proc.stderr.strip().splitlines()[-1]}")
        seconds.append(time.perf_counter() - t0)
        reports.append(json.loads((run_dir / "report.json").read_text()))
    machine = reports[0]["machine"]
    print(f"{machine['cpu_model']} ({machine.get('cpu_generation')}), {machine['cores_physical']} cores; "
          f"threads {[r['settings']['threads'] for r in reports]}; "
          f"runs took {', '.join(f'{s:.0f} s' for s in seconds)}")
    print()
    print("| batch | " + " | ".join(f"run {i + 1} recommends" for i in range(len(reports))) + " | same |")
    print("|---:|" + "---|" * len(reports) + ":---:|")
    batches = sorted({c["batch"] for r in reports for c in r["recommendation"]["choices"]})
    agree = True
    for batch in batches:
        picks = [next((f"{c['variant']} on {c['runtime']}" for c in r["recommendation"]["choices"]
                       if c["batch"] == batch), "-") for r in reports]
        agree &= len(set(picks)) == 1
        print(f"| {batch} | " + " | ".join(picks) + f" | {'yes' if len(set(picks)) == 1 else 'no'} |")
    print()
    print("| variant | runtime | batch | " + " | ".join(f"run {i + 1}" for i in range(len(reports)))
          + " | spread of medians | intervals overlap | busy rows |")
    print("|---|---|---:|" + "---:|" * len(reports) + "---:|:---:|---:|")
    keys = [(r["variant"], r["runtime"], r["batch"]) for r in reports[0]["results"]]
    overlapping = 0
    for key in keys:
        rows = [next((x for x in r["results"] if (x["variant"], x["runtime"], x["batch"]) == key), None)
                for r in reports]
        if any(x is None or x.get("speedup_interval") is None for x in rows):
            continue
        medians = [x["speedup_vs_fp32"] for x in rows]
        intervals = [x["speedup_interval"] for x in rows]
        ok = all(_overlap(a, b) for i, a in enumerate(intervals) for b in intervals[i + 1:])
        overlapping += ok
        spread = (max(medians) - min(medians)) / min(medians)
        busy = sum(bool(x.get("busy_reasons")) for x in rows)
        cells = [f"{m:.2f}x ({lo:.2f}-{hi:.2f})" for m, (lo, hi) in zip(medians, intervals)]
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells)
              + f" | {spread * 100:.1f} % | {'yes' if ok else 'no'} | {busy} |")
    print()
    print(f"recommendations identical in every run: {'yes' if agree else 'no'}; "
          f"rows whose intervals all overlap: {overlapping} of {len(keys)}")


if __name__ == "__main__":
    main()
