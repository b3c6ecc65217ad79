"""How fast the command line answers: --help, --version, list, and the user mistakes of tests/test_fast_errors.py.

Each case runs in a fresh process `--repeat` times; prints the median and the slowest wall time per case.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED

SST2 = SHARED / "models" / "minilm-l6-sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    artifact = tmp / "onnx"
    subprocess.run([sys.executable, "-m", "qdeploy", "export", "--model", SST2, "--format", "onnx", "--out",
                    artifact], check=True, capture_output=True)
    cases = {
        "--help": ["--help"], "--version": ["--version"], "list": ["list"],
        "export into an existing --out": ["export", "--model", SST2, "--format", "onnx", "--out", tmp],
        "export dropping a head": ["export", "--model", SST2, "--task", "feature-extraction", "--format", "onnx",
                                   "--out", tmp / "x"],
        "quantize, missing calibration file": ["quantize", artifact, "--method", "ort-static", "--calibration",
                                               "nope.txt", "--out", tmp / "q"],
        "bench, --seq-len beyond the model": ["bench", artifact, "--seq-len", "1024"],
        "run, unknown method": ["run", "--methods", "bogus", "--out", tmp / "r"],
    }
    print("| case | exit | median s | slowest s |")
    print("|---|---:|---:|---:|")
    for name, case in cases.items():
        times, code = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            code = subprocess.run([sys.executable, "-m", "qdeploy", *map(str, case)], capture_output=True).returncode
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {code} | {statistics.median(times):.2f} | {max(times):.2f} |")


if __name__ == "__main__":
    main()
