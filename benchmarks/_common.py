"""Shared by the benchmark scripts: run a plan with long measurements and print the ratio table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from qdeploy import pipeline, plan as plans

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def run(overrides: dict, default_out: str) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--min-time-s", type=float, default=5.0)
    parser.add_argument("--min-reps", type=int, default=50)
    args = parser.parse_args()
    data = {**plans.default().to_dict(), **overrides, "min_time_s": args.min_time_s, "min_reps": args.min_reps,
            "warmup": 10}
    report_path = pipeline.run(plans.from_dict(data), out=Path(args.out))
    report = json.loads((report_path.parent / "report.json").read_text())
    print(f"{report['machine']['cpu_model']}, {report['settings']['threads']} threads")
    print(f"{'variant':18} {'runtime':13} {'batch':>5} {'p50 ms':>9} {'speed-up':>8} {'size MB':>8}  quality")
    for row in report["results"]:
        q = row["quality"]
        print(f"{row['variant']:18} {row['runtime']:13} {row['batch']:>5} {row['latency_ms']['p50']:>9.2f} "
              f"{row['speedup_vs_fp32']:>7.2f}x {row['size_mb']:>8.1f}  {q['metric']} {q['value']:.4f} "
              f"({q['delta']:+.4f})")
    print(report_path)
