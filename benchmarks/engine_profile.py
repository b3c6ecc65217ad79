"""Where a decode step's time goes inside ONNX Runtime GenAI: a per-operator profile of any folders the engine loads
(qdeploy's artifacts, the model builder's output), side by side.

Each folder gets a 128-token prompt of real text at batch 1, then STEPS greedy steps, with ONNX Runtime's profiler
switched on through the engine's session options. The kernel events of the decode runs (every model run after the
prompt's) are summed by operator type and divided by the number of runs; "outside the kernels" is a run's wall time
less its kernels (the engine's own work, copies of the cache). Milliseconds are this machine's: compare the columns
of one run.

    python benchmarks/engine_profile.py runs/llm-engines/artifacts/qdeploy-weight-int4-onnx \
        runs/llm-engines/peers/ortgenai-builder-int4
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

PROMPT, STEPS = 128, 32


def profile(directory: Path, prompt: np.ndarray, threads: int) -> tuple[dict[str, float], float, int]:
    """(ms per decode run by operator type, wall ms per decode run, kernels per decode run)."""
    import onnxruntime_genai as og

    prefix = Path(tempfile.mkdtemp(prefix="qdeploy-genai-profile-")) / "run"
    config = og.Config(str(directory))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1, "enable_profiling": str(prefix)}}}}))
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=prompt.shape[1] + STEPS + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt.astype(np.int32))
    for _ in range(STEPS):
        generator.generate_next_token()
    del generator, model  # the profile file is written when the session ends
    events = json.loads(next(prefix.parent.glob("run*.json")).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    decode_runs = runs[1:]
    per_op: dict[str, float] = defaultdict(float)
    kernels = 0
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        ts = event["ts"]
        if any(start <= ts <= end for start, end in decode_runs):
            per_op[event["args"].get("op_name", "?")] += event["dur"] / 1000
            kernels += 1
    count = max(1, len(decode_runs))
    wall = sum(end - start for start, end in decode_runs) / 1000 / count
    return {op: ms / count for op, ms in per_op.items()}, wall, kernels // count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    lambada = Path(__file__).resolve().parents[2] / "shared" / "data" / "lambada" / "lambada_test.jsonl"
    text = " ".join(json.loads(line)["text"] for line in lambada.read_text(encoding="utf-8").splitlines()[:20])
    tokenizer = AutoTokenizer.from_pretrained(args.folders[0])
    prompt = np.array([tokenizer(text)["input_ids"][:PROMPT]])
    results = {Path(f).name: profile(Path(f), prompt, args.threads) for f in args.folders}
    ops = sorted({op for per_op, _, _ in results.values() for op in per_op},
                 key=lambda op: -max(r[0].get(op, 0) for r in results.values()))
    names = list(results)
    print("| ms per decode step | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for op in ops:
        print(f"| {op} | " + " | ".join(f"{results[n][0].get(op, 0):.2f}" for n in names) + " |")
    print("| outside the kernels | " + " | ".join(f"{results[n][1] - sum(results[n][0].values()):.2f}"
                                                  for n in names) + " |")
    print("| **wall** | " + " | ".join(f"**{results[n][1]:.2f}**" for n in names) + " |")
    print("| kernels per step | " + " | ".join(str(results[n][2]) for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
