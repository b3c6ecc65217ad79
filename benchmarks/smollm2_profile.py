"""Where a decode step's time goes on ONNX Runtime: a per-operator profile of SmolLM2-135M-Instruct's ONNX artifacts
(the ones smollm2_tables.py made, under the same --out).

Each artifact gets a 128-token prompt of real text at batch 1, then 32 greedy steps with ONNX Runtime's profiler on.
The profile's kernel events of those 32 steps are summed by operator type and divided by 32; "outside the kernels" is
the wall time of a step less its kernels (feeding, fetching, the session's own work). Milliseconds are this machine's:
compare the rows of one run, not the numbers of two machines.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import SHARED

PROMPT, STEPS = 128, 32
DEFAULT = ["fp32-onnx", "w8a8_per-block_(weight-int8_onnx)", "w4a8_per-block_(weight-int4_group_32_onnx)"]


def profile(directory: Path, prompt: np.ndarray, threads: int | None) -> tuple[dict[str, float], float]:
    """(ms per step by operator type, wall ms per step) over STEPS decode steps after the prompt."""
    import onnxruntime as ort

    from qdeploy.artifact import Artifact
    from qdeploy.runtimes import RUNTIMES, decoding

    artifact = Artifact.load(directory)
    decoder = decoding.load(artifact, RUNTIMES.get("ort-cpu"), threads)
    # The same session settings as the decoder's own, with the profiler on.
    options = decoder.session.get_session_options()
    options.enable_profiling = True
    options.profile_file_prefix = f"/tmp/qdeploy-profile-{directory.name[:40]}"
    disabled = artifact.manifest.runtime_config.get("onnxruntime", {}).get("disabled_optimizers", [])
    decoder.session = ort.InferenceSession(str(artifact.model_path), options, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=list(disabled))
    mask = np.ones_like(prompt)
    decoder.generate(prompt, mask, 4, eos_token_id=None)  # warm-up: first runs allocate
    decoder.reset(1)
    logits = decoder.step(prompt, mask)[:, -1]
    t0 = time.perf_counter()
    for _ in range(STEPS):
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        logits = decoder.step(logits.argmax(-1)[:, None], mask)[:, -1]
    wall = (time.perf_counter() - t0) * 1000 / STEPS
    events = json.loads(Path(decoder.session.end_profiling()).read_text())
    # The last STEPS runs are the decode steps: their kernels only (not the warm-up's, not the prompt's).
    runs = [e for e in events if e.get("name") == "model_run"]
    first = runs[-STEPS]["ts"]
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first:
            by_op[event["args"]["op_name"]] += event["dur"] / 1000 / STEPS
    return dict(by_op), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/smollm2-tables")
    parser.add_argument("--artifacts", default=",".join(DEFAULT),
                        help="comma-separated directories under OUT/artifacts")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=8, help="operator types to list by name (the rest summed)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from smollm2_tables import machine_line

    work = Path(args.out)
    names = args.artifacts.split(",")
    tokenizer = AutoTokenizer.from_pretrained(str(work / "artifacts" / names[0]))
    text = SHARED / "data" / "wikitext-2" / "wiki.test.raw"
    prompt = np.array([tokenizer(text.read_text(encoding="utf-8")[:4000])["input_ids"][:PROMPT]], dtype=np.int64)
    found = {}
    for name in names:
        found[name] = profile(work / "artifacts" / name, prompt, args.threads)
        print(f"{name}: {found[name][1]:.1f} ms a step", file=sys.stderr, flush=True)
    totals: dict[str, float] = defaultdict(float)
    for by_op, _ in found.values():
        for op, ms in by_op.items():
            totals[op] += ms
    top = sorted(totals, key=totals.get, reverse=True)[:args.top]
    out = [f"CPU: {machine_line()}; threads: {args.threads or 'runtime default'}; batch 1, {PROMPT}-token prompt, "
           f"ms per decode step over {STEPS} steps (ONNX Runtime's profiler on).", "",
           "| ms per step | " + " | ".join(found) + " |", "|---|" + "---:|" * len(found)]
    rows = [("wall time of a step", lambda b, w: w), ("kernels", lambda b, w: sum(b.values()))]
    rows += [(op, lambda b, w, op=op: b.get(op, 0.0)) for op in top]
    rows += [("other operators", lambda b, w: sum(v for k, v in b.items() if k not in top)),
             ("outside the kernels", lambda b, w: w - sum(b.values()))]
    for label, value in rows:
        out.append(f"| {label} | " + " | ".join(f"{value(b, w):.1f}" for b, w in found.values()) + " |")
    text = "\n".join(out) + "\n"
    (work / "profile.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
