"""Decode speed where it is real: SmolLM2-135M-Instruct (the default generative model) generating on every runtime,
every variant against PyTorch fp32 in the same run.

For each batch size (1 and 4): a 128-token prompt of real text (time to first token), then 64 new tokens greedily
(decode tokens/s). Every session generates in turn, the order rotating each round, and each speed-up is the median of
the per-round ratios with its 95 % interval (benchmarking.generation.generation_rounds). Peak memory is measured in a
fresh process per artifact (load, 128-token prompt, 32 new tokens). The quantized artifacts are the ones
smollm2_tables.py made (under the same --out), or are made here with the same calibration.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import peak_rss_mb, size_mb
from smollm2_tables import RUNTIME, VARIANTS, setup, slug

# The static QDQ recipes (ort-static, smoothquant, outlier) decode at 0.16-0.25x PyTorch on ONNX Runtime's CPU
# provider (measured on the opset-18 export): name them with --only; at about 5 tokens/s each adds minutes a batch.
DECODE_VARIANTS = ["onnx fp32", "openvino fp32", "w8a8 per-block (weight-int8, onnx)", "w8 (weight-int8, openvino)",
                   "w4a8 per-block (weight-int4 group 32, onnx)", "w4 (weight-int4 group 32, openvino)",
                   "w8a8 dynamic (ort-dynamic)", "w8a8 static (nncf-ptq)"]
PROMPT, NEW_TOKENS = 128, 64


def artifacts(work: Path, labels: list[str]):
    """label -> (artifact, runtime), made (and kept) where smollm2_tables.py has not made them yet."""
    from qdeploy import quantization
    from qdeploy.artifact import Artifact

    source, parents, _, calibration = setup(work)
    found = {}
    for variant in VARIANTS:
        if variant.label not in labels:
            continue
        if variant.method is None:
            found[variant.label] = (parents[variant.fmt], RUNTIME[variant.fmt])
            continue
        target = work / "artifacts" / slug(variant.label)
        artifact = (Artifact.load(target) if (target / "manifest.json").exists() else
                    quantization.quantize(parents[variant.fmt], quantization.make_config(variant.method,
                                                                                         variant.options, variant.fmt),
                                          target, calibration))
        found[variant.label] = (artifact, RUNTIME[variant.fmt])
    return source, parents, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/smollm2-tables")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--threads", type=int, default=None, help="threads per session (default: the runtime's)")
    parser.add_argument("--only", help="';'-separated variant labels (default: every one of DECODE_VARIANTS)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from qdeploy import runtimes
    from qdeploy.baseline import baseline_artifact
    from qdeploy.benchmarking.generation import generation_rounds
    from qdeploy.benchmarking.inputs import benchmark_case
    from qdeploy.benchmarking.interleaved import ratio
    from qdeploy.tasks import for_generation
    from smollm2_tables import machine_line

    work = Path(args.out)
    t_start = time.perf_counter()
    source, parents, found = artifacts(work, args.only.split(";") if args.only else DECODE_VARIANTS)
    tokenizer = for_generation(AutoTokenizer.from_pretrained(str(source.path)))
    torch_fp32 = baseline_artifact(source, "text-generation", list(parents["onnx"].manifest.inputs),
                                   pad_token_id=int(tokenizer.pad_token_id))
    # Every session is held at once (about 3 GB here): interleaved rounds need them all, and a session loaded per
    # round would time its load. Peak memory is measured apart, in a fresh process per artifact.
    sessions = {"pytorch fp32": runtimes.load(torch_fp32, "torch", args.threads)}
    sessions.update({label: runtimes.load(artifact, runtime, args.threads)
                     for label, (artifact, runtime) in found.items()})
    memory = {"pytorch fp32": peak_rss_mb("pytorch", "torch")}
    memory.update({label: peak_rss_mb(artifact.directory, runtime) for label, (artifact, runtime) in found.items()})
    results = {"machine": machine_line(), "threads": args.threads, "rounds": args.rounds, "batches": {}}
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        case = benchmark_case(tokenizer, ["input_ids", "attention_mask"], batch, PROMPT)
        t0 = time.perf_counter()
        ttft, decode, load, busy = generation_rounds(sessions, case.inputs, NEW_TOKENS, args.rounds,
                                                     tick=lambda: print(".", end="", file=sys.stderr, flush=True))
        print(f" batch {batch}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        rows = {}
        for label in sessions:
            tokens_s = batch * (NEW_TOKENS - 1) / decode[label]
            rows[label] = {"ttft_ms": float(np.median(ttft[label]) * 1000),
                           "decode_tokens_per_s": float(np.median(tokens_s)),
                           "ttft_speedup": ratio(ttft["pytorch fp32"], ttft[label]).to_dict(),
                           "decode_speedup": ratio(decode["pytorch fp32"], decode[label]).to_dict()}
        results["batches"][batch] = {"rows": rows, "load": load, "busy": busy}
    results["memory_mb"] = memory
    results["size_mb"] = {label: size_mb(artifact.directory) for label, (artifact, _) in found.items()}
    results["minutes"] = (time.perf_counter() - t_start) / 60
    (work / "decode.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    text = markdown(results, {label: runtime for label, (_, runtime) in found.items()})
    (work / "decode.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def markdown(results: dict, runtimes_of: dict[str, str]) -> str:
    fmt = lambda r: f"{r['median']:.2f}x ({r['interval'][0]:.2f}-{r['interval'][1]:.2f})"
    base_mem = results["memory_mb"]["pytorch fp32"]
    out = [f"CPU: {results['machine']}; threads: {results['threads'] or 'runtime default'}; {results['rounds']} "
           f"interleaved rounds; prompt {PROMPT} tokens, {NEW_TOKENS} new tokens; {results['minutes']:.0f} min.", "",
           "| variant | runtime | batch | TTFT ms | TTFT vs PyTorch fp32 | decode tok/s | decode vs PyTorch fp32 "
           "| size MB | peak MB (vs PyTorch fp32) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for batch, data in results["batches"].items():
        for label, row in data["rows"].items():
            mem = results["memory_mb"][label]
            size = results["size_mb"].get(label)
            out.append(f"| {label} | {runtimes_of.get(label, 'torch')} | {batch} | {row['ttft_ms']:.0f} | "
                       f"{fmt(row['ttft_speedup'])} | {row['decode_tokens_per_s']:.1f} | {fmt(row['decode_speedup'])} "
                       f"| {f'{size:.0f}' if size else ''} | {mem:.0f} ({mem / base_mem:.2f}x) |")
        if data["busy"]:
            out.append(f"| batch {batch}: machine busy: {'; '.join(data['busy'])} | | | | | | | | |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
