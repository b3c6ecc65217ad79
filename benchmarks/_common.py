"""Shared by the benchmark scripts: run a plan with long measurements and print the ratio table."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from qdeploy import pipeline, plan as plans

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def peak_rss_mb(artifact: Path | str, runtime: str) -> float:
    """Peak resident memory of a fresh process that loads the artifact (`pytorch`: the default generative model's
    PyTorch fp32) and generates 32 tokens from a 128-token prompt: what deploying it costs, without the measuring
    process's other models."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a large process would report its
    # parent's peak.
    code = ("import sys, numpy as np\n"
            "from qdeploy import models, runtimes\nfrom qdeploy.artifact import Artifact\n"
            "from qdeploy.baseline import baseline_artifact\n"
            "a = (baseline_artifact(models.resolve(None, task='text-generation'), 'text-generation', "
            "['input_ids', 'attention_mask', 'position_ids'], pad_token_id=2) if sys.argv[1] == 'pytorch' "
            "else Artifact.load(sys.argv[1]))\n"
            "s = runtimes.load(a, sys.argv[2])\n"
            "s.generate(np.full((1, 128), 100, dtype=np.int64), np.ones((1, 128), dtype=np.int64), 32)\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(int(hwm.split()[1]) / 1024)\n")
    done = subprocess.run([sys.executable, "-c", code, str(artifact), runtime], capture_output=True, text=True)
    if done.returncode:
        return float("nan")
    return float(done.stdout.strip().splitlines()[-1])


def size_mb(directory: Path) -> float:
    model_files = (".onnx", ".data", ".xml", ".bin", ".safetensors")
    return sum(p.stat().st_size for p in directory.rglob("*") if p.suffix in model_files) / 2**20


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
