"""The language-model engines side by side on one machine: qdeploy's SmolLM2-135M artifacts in every runtime, beside
what a user would pick instead, in one process tree, with equal threads.

Contestants (each skipped with its reason when it cannot be had here):
- PyTorch fp32 (the reference of every ratio);
- qdeploy's artifacts (fp32, weight-int8, weight-int4 on ONNX; fp32, nncf-weight-int8, weight-int4 on OpenVINO), each
  through qdeploy's own loop (ort-cpu, openvino-cpu) and through the engine (ort-genai, openvino-genai);
- ONNX Runtime GenAI's model builder, int8 and int4 (run in the Python given by --builder-python: the builder of
  onnxruntime-genai 0.18 imports transformers 5, qdeploy pins 4.57);
- optimum-intel's int8 and int4 (`optimum-cli export openvino`, group size 32) under OpenVINO GenAI;
- llama.cpp through llama-cpp-python on the same GGUF: its own Q4_1, and Q8_0 requantized from it by llama.cpp's
  quantizer (the package ships only Q4_1, and qdeploy's fp32 is that file dequantized, so both start from one model).

Measured: decode tokens/s at batch 1 (128-token prompts of real text, 64 greedy tokens, the end token ignored) in
interleaved rounds, each ratio to PyTorch fp32 the median of per-round ratios with its 95 % interval; time to first
token, with a check that the engine does not cache a repeated prompt; peak memory (VmHWM) of a fresh process that
loads the contestant and generates; the memory-bandwidth bound (weights read once per token); greedy agreement with
PyTorch fp32 over 64 tokens (mean tokens before the first difference, over 8 prompts); LAMBADA last-word accuracy on
--lambada lines by greedy generation (the first word generated after the context), which every engine can be scored
on, logits or not. An engine whose text is not sensible (accuracy under half of fp32's) is flagged, so that no broken
engine gets a fast number. Results go to OUT/engines.json and OUT/engines.md; artifacts are kept under OUT.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAMBADA = ROOT.parent / "shared" / "data" / "lambada" / "lambada_test.jsonl"
PROMPT, NEW_TOKENS, AGREEMENT_PROMPTS = 128, 64, 8
OWN_LOOP = ("@ ort-cpu", "@ openvino-cpu")  # qdeploy's Python loop over the runtime, beside the engine's
QDEPLOY = [  # label, format, method (None: the fp32 export), runtimes
    ("qdeploy fp32 onnx", "onnx", None, ("ort-cpu", "ort-genai")),
    ("qdeploy weight-int8 onnx", "onnx", "weight-int8", ("ort-cpu", "ort-genai")),
    ("qdeploy weight-int4 onnx", "onnx", "weight-int4", ("ort-cpu", "ort-genai")),
    ("qdeploy fp32 openvino", "openvino", None, ("openvino-cpu", "openvino-genai")),
    ("qdeploy nncf-weight-int8 openvino", "openvino", "nncf-weight-int8", ("openvino-cpu", "openvino-genai")),
    ("qdeploy weight-int4 openvino", "openvino", "weight-int4", ("openvino-cpu", "openvino-genai")),
]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class LlamaCpp:
    """llama.cpp through llama-cpp-python, greedy, its generation loop in C++; a fresh context state per call (no
    prefix of an earlier prompt is reused)."""

    def __init__(self, gguf: Path, threads: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, n_batch=512,
                         verbose=False, logits_all=False)

    def _tokens(self, ids, new_tokens: int, clock: list[float] | None = None) -> list[int]:
        self.llm.reset()
        out = []
        for token in self.llm.generate([int(t) for t in ids], top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            if clock is not None:
                clock.append(time.perf_counter())
            out.append(int(token))
            if len(out) == new_tokens:
                break
        return out

    def generate(self, input_ids, attention_mask=None, max_new_tokens=32, eos_token_id=None, **_):
        rows = [self._tokens(row[mask > 0] if attention_mask is not None else row, max_new_tokens)
                for row, mask in zip(input_ids, attention_mask if attention_mask is not None else input_ids)]
        return np.array(rows, dtype=np.int64)

    def timed_generate(self, input_ids, attention_mask, new_tokens):
        clock: list[float] = []
        t0 = time.perf_counter()
        self._tokens(input_ids[0], new_tokens, clock)
        return clock[0] - t0, clock[-1] - clock[0]


def build(work: Path, builder_python: str | None) -> dict[str, tuple]:
    """label -> (kind, path, runtime); what cannot be built is returned as (None, reason, None)."""
    from qdeploy import exporters, models, quantization
    from qdeploy.artifact import Artifact

    source = models.resolve(None, task="text-generation")
    found: dict[str, tuple] = {}
    parents = {}
    for label, fmt, method, runtimes_ in QDEPLOY:
        target = work / "artifacts" / slug(label)
        if not (target / "manifest.json").exists():
            print(f"building {label}", file=sys.stderr, flush=True)
            if method is None:
                exporters.export(source, "text-generation", fmt, target)
            else:
                parent = parents[fmt]
                quantization.quantize(parent, quantization.make_config(method, {}, fmt), target)
        artifact = Artifact.load(target)
        if method is None:
            parents[fmt] = artifact
        for runtime in runtimes_:
            found[f"{label} @ {runtime}"] = ("qdeploy", str(target), runtime)
    peers = work / "peers"
    peers.mkdir(parents=True, exist_ok=True)
    for precision in ("int8", "int4"):
        label, target = f"ORT GenAI builder {precision}", peers / f"ortgenai-builder-{precision}"
        if not (target / "genai_config.json").exists():
            if not builder_python:
                found[label] = (None, "no --builder-python (the builder needs transformers 5)", None)
                continue
            done = subprocess.run([builder_python, "-m", "onnxruntime_genai.models.builder", "-i", str(source.path),
                                   "-o", str(target), "-p", precision, "-e", "cpu", "-c", str(peers / "cache")],
                                  capture_output=True, text=True)
            if done.returncode:
                found[label] = (None, f"the builder failed: {done.stderr.strip().splitlines()[-1][:200]}", None)
                continue
        found[label] = ("ortgenai", str(target), None)
    for precision, extra in (("int8", []), ("int4", ["--group-size", "32", "--ratio", "1.0"])):
        label, target = f"optimum-intel {precision} @ openvino-genai", peers / f"optimum-intel-{precision}"
        if not (target / "openvino_model.xml").exists():
            cli = Path(sys.executable).with_name("optimum-cli")
            done = subprocess.run([str(cli), "export", "openvino", "-m", str(source.path), "--task",
                                   "text-generation-with-past", "--weight-format", precision, *extra, str(target)],
                                  capture_output=True, text=True)
            if done.returncode:
                found[label] = (None, f"optimum-cli failed: {done.stderr.strip().splitlines()[-1][:200]}", None)
                continue
        found[label] = ("ovgenai", str(target), None)
    gguf = Path(json.loads((source.path / "qdeploy-gguf.json").read_text())["file"])
    try:
        import llama_cpp
    except ImportError:
        for name in ("Q8_0", "Q4_1"):
            found[f"llama.cpp {name}"] = (None, "llama-cpp-python is not installed (pip install "
                                                "llama-cpp-python==0.3.36 builds llama.cpp: about 16 minutes)", None)
        return found
    q8 = peers / "smollm2-q8_0.gguf"
    if not q8.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        if llama_cpp.llama_model_quantize(str(gguf).encode(), str(q8).encode(), params) != 0:
            found["llama.cpp Q8_0"] = (None, "llama.cpp's quantizer failed", None)
    if q8.exists():
        found["llama.cpp Q8_0"] = ("llamacpp", str(q8), None)
    found["llama.cpp Q4_1"] = ("llamacpp", str(gguf), None)
    return found


def load(entry: tuple, threads: int, fp32_pad: int):
    """A session with generate() and, for the engines, timed_generate()."""
    kind, path, runtime = entry
    from qdeploy import models, runtimes
    from qdeploy.artifact import Artifact

    if kind == "pytorch":
        from qdeploy.baseline import baseline_artifact

        artifact = baseline_artifact(models.resolve(None, task="text-generation"), "text-generation",
                                     ["input_ids", "attention_mask", "position_ids"], pad_token_id=fp32_pad)
        return runtimes.load(artifact, "torch", threads)
    if kind == "qdeploy":
        return runtimes.load(Artifact.load(path), runtime, threads)
    if kind == "ortgenai":
        from qdeploy.runtimes.ort_genai import OrtGenAIDecoder

        return OrtGenAIDecoder(Path(path), threads, input_names=["input_ids", "attention_mask"],
                               pad_token_id=fp32_pad, eos_token_id=None)
    if kind == "ovgenai":
        from qdeploy.runtimes.openvino_genai import OpenVinoGenAIDecoder

        return OpenVinoGenAIDecoder(Path(path), {}, threads, input_names=["input_ids", "attention_mask"],
                                    pad_token_id=fp32_pad, eos_token_id=None)
    if kind == "llamacpp":
        return LlamaCpp(Path(path), threads)
    raise ValueError(kind)


def peak_memory(label: str, entry: tuple, threads: int, pad: int) -> float:
    """VmHWM of a fresh process that loads the contestant and generates 32 tokens from a 128-token prompt."""
    done = subprocess.run([sys.executable, __file__, "--peak", json.dumps([label, list(entry), threads, pad])],
                          capture_output=True, text=True, cwd=str(Path(__file__).parent))
    lines = done.stdout.strip().splitlines()
    return float(lines[-1]) if done.returncode == 0 and lines else float("nan")


def bandwidth_gb_s(threads: int) -> float:
    """Memory bandwidth from a large numpy copy (read + write), the best of five."""
    a = np.ones(64 * 2**20 // 8)  # 64 MiB, far beyond the caches
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def weights_mb(entry: tuple) -> float:
    kind, path, _ = entry
    if kind == "pytorch":
        from qdeploy import models

        return sum(f.stat().st_size for f in models.resolve(None, task="text-generation").path.glob(
            "*.safetensors")) / 2**20
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.suffix in (".onnx", ".data", ".bin")
                                     and "tokenizer" not in f.name]
    return sum(f.stat().st_size for f in files) / 2**20


def lambada(sessions: dict, tokenizer, lines: int) -> dict[str, float]:
    """Last-word accuracy by greedy generation: the first word generated after the context is the target."""
    examples = [json.loads(line)["text"] for line in LAMBADA.read_text(encoding="utf-8").splitlines()[:lines]]
    hits = {label: 0 for label in sessions}
    for text in examples:
        context, target = text.rsplit(" ", 1)
        ids = np.array([tokenizer(context)["input_ids"]], dtype=np.int64)
        for label, session in sessions.items():
            new = session.generate(ids, np.ones_like(ids), 6, eos_token_id=None)[0]
            words = tokenizer.decode(new.tolist(), skip_special_tokens=True).strip().split()
            hits[label] += bool(words) and re.sub(r"\W+$", "", words[0]) == target
    return {label: 100 * h / len(examples) for label, h in hits.items()}


def agreement(sessions: dict, prompts: list[np.ndarray], reference: str) -> dict[str, float]:
    """Mean number of greedy tokens (of 64) before the first that differs from the reference's."""
    tokens = {label: [s.generate(p, np.ones_like(p), NEW_TOKENS, eos_token_id=None)[0] for p in prompts]
              for label, s in sessions.items()}
    result = {}
    for label, rows in tokens.items():
        same = []
        for row, ref in zip(rows, tokens[reference]):
            diff = np.nonzero(row[:len(ref)] != ref[:len(row)])[0]
            same.append(int(diff[0]) if len(diff) else min(len(row), len(ref)))
        result[label] = float(np.mean(same))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/llm-engines")
    parser.add_argument("--rounds", type=int, default=8, help="at least 6, for a 95 %% interval of the median")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lambada", type=int, default=500, help="LAMBADA lines scored per contestant (0: none)")
    parser.add_argument("--builder-python", help="a Python with onnxruntime-genai and transformers 5 for the builder")
    parser.add_argument("--only", help="a regular expression: the contestants to include (PyTorch fp32 always is)")
    parser.add_argument("--peak", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:  # a child measuring one contestant's peak memory
        label, entry, threads, pad = json.loads(args.peak)
        session = load(tuple(entry), threads, pad)
        ids = np.full((1, PROMPT), 100, dtype=np.int64)
        session.generate(ids, np.ones_like(ids), 32, eos_token_id=None)
        print(int([x for x in open("/proc/self/status") if x.startswith("VmHWM")][0].split()[1]) / 1024)
        return 0
    from transformers import AutoTokenizer

    from qdeploy import models
    from qdeploy.benchmarking.generation import generation_rounds
    from qdeploy.benchmarking.inputs import benchmark_case
    from qdeploy.benchmarking.interleaved import ratio
    from qdeploy.machine import describe
    from qdeploy.tasks import for_generation

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    source = models.resolve(None, task="text-generation")
    tokenizer = for_generation(AutoTokenizer.from_pretrained(str(source.path)))
    pad = int(tokenizer.pad_token_id)
    entries = {"PyTorch fp32": ("pytorch", "", "torch")}
    entries.update(build(work, args.builder_python))
    skipped = {label: entry[1] for label, entry in entries.items() if entry[0] is None}
    entries = {label: e for label, e in entries.items() if e[0] is not None
               and (label == "PyTorch fp32" or not args.only or re.search(args.only, label))}
    sessions = {}
    for label, entry in entries.items():
        try:
            sessions[label] = load(entry, args.threads, pad)
        except Exception as exc:  # a contestant that does not load is reported, not fatal
            skipped[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    case = benchmark_case(tokenizer, ["input_ids", "attention_mask"], 1, PROMPT)
    print(f"{len(sessions)} contestants; timing {args.rounds} rounds", file=sys.stderr, flush=True)
    ttft, decode, load_seen, busy = generation_rounds(sessions, case.inputs, NEW_TOKENS, args.rounds,
                                                      tick=lambda: print(".", end="", file=sys.stderr, flush=True))
    # Prompt caching: the same prompt twice in a row against a fresh one; a repeat far faster means a cache.
    from qdeploy.benchmarking.generation import _once

    caching = {}
    for label, session in sessions.items():
        fresh = _once(session, case.inputs[-1], 2)[0]
        repeat = _once(session, case.inputs[-1], 2)[0]
        caching[label] = repeat / fresh
    prompts = [np.array([tokenizer(json.loads(line)["text"])["input_ids"][:64]]) for line in
               LAMBADA.read_text(encoding="utf-8").splitlines()[-AGREEMENT_PROMPTS:]]
    agree = agreement(sessions, prompts, "PyTorch fp32")
    # qdeploy's own loop runs the very artifact its engine row runs, to the same tokens (tests/test_engines.py):
    # LAMBADA is scored once, through the engine, and shown on both rows.
    scored = {label: s for label, s in sessions.items() if not label.endswith(OWN_LOOP)}
    accuracy = lambada(scored, tokenizer, args.lambada) if args.lambada else {}
    for label in sessions:
        engine = label.replace("@ ort-cpu", "@ ort-genai").replace("@ openvino-cpu", "@ openvino-genai")
        if label.endswith(OWN_LOOP) and engine in accuracy:
            accuracy[label] = accuracy[engine]
    bandwidth = bandwidth_gb_s(args.threads)
    del sessions
    memory = {label: peak_memory(label, entry, args.threads, pad) for label, entry in entries.items()
              if label not in skipped}
    rows = {}
    for label in decode:
        tokens_s = (NEW_TOKENS - 1) / decode[label]
        mb = weights_mb(entries[label])
        rows[label] = {"decode_tokens_per_s": float(np.median(tokens_s)),
                       "decode_speedup": ratio(decode["PyTorch fp32"], decode[label]).to_dict(),
                       "ttft_ms": float(np.median(ttft[label]) * 1000), "repeat_prompt_ttft_ratio": caching[label],
                       "peak_rss_mb": memory.get(label), "weights_mb": mb,
                       "bandwidth_bound_fraction": float(np.median(tokens_s)) * mb * 2**20 / (bandwidth * 1e9),
                       "greedy_tokens_agreeing": agree[label], "lambada": accuracy.get(label)}
    fp32_accuracy = accuracy.get("PyTorch fp32")
    for row in rows.values():
        row["sensible"] = fp32_accuracy is None or (row["lambada"] or 0) >= fp32_accuracy / 2
    results = {"machine": describe(), "threads": args.threads, "rounds": args.rounds, "lambada_lines": args.lambada,
               "bandwidth_gb_s": bandwidth, "busy": busy, "load": load_seen, "rows": rows, "skipped": skipped}
    (work / "engines.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    text = markdown(results)
    (work / "engines.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def markdown(results: dict) -> str:
    machine = results["machine"]
    cpu = f"{machine.get('cpu_model', '?')} ({machine.get('cpu_generation', '?')})"
    lines = [f"{cpu}, {results['threads']} threads for every engine, batch 1, {PROMPT}-token prompts, "
             f"{NEW_TOKENS} greedy tokens, {results['rounds']} interleaved rounds; memory bandwidth "
             f"{results['bandwidth_gb_s']:.1f} GB/s (numpy copy); LAMBADA on {results['lambada_lines']} lines by "
             "greedy generation.", "",
             "| engine and artifact | decode tok/s | vs PyTorch fp32 (95 % interval) | TTFT ms | peak RSS MB | "
             "of bandwidth bound | greedy tokens = fp32 (of 64) | LAMBADA % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, row in sorted(results["rows"].items(), key=lambda kv: -kv[1]["decode_tokens_per_s"]):
        s = row["decode_speedup"]
        flags = ("" if row["sensible"] else " (not sensible)") + (
            " (caches prompts)" if row["repeat_prompt_ttft_ratio"] < 0.5 else "")
        lam = "" if row["lambada"] is None else f"{row['lambada']:.1f}"
        peak = row["peak_rss_mb"] or float("nan")
        lines.append(f"| {label}{flags} | {row['decode_tokens_per_s']:.1f} | {s['median']:.2f}x "
                     f"({s['interval'][0]:.2f}-{s['interval'][1]:.2f}) | {row['ttft_ms']:.0f} | {peak:.0f} "
                     f"| {100 * row['bandwidth_bound_fraction']:.0f} % | {row['greedy_tokens_agreeing']:.1f} | {lam} |")
    for label, reason in results["skipped"].items():
        lines.append(f"\nnot run: {label}: {reason}")
    if results["busy"]:
        lines.append(f"\nthe machine was busy: {'; '.join(results['busy'])}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
