"""Numbers that a reorganization of the code must leave identical (issue 17): every method's quality on the three
real cases, from the same seeds, written as JSON and printed as Markdown. Run it before and after a change on the
same machine and compare the two files (`--compare BEFORE.json AFTER.json` prints every number that moved).

- SST-2 classifier (../shared minilm-l6-sst2): accuracy on the 872 GLUE dev rows and held-out sentence agreement with
  PyTorch fp32, for every int8 method of tests/test_accuracy.py and fp8;
- all-MiniLM-L6-v2 (the default run's methods): held-out cosine to PyTorch fp32;
- stories260K (the methods table of stories260k_methods.py): perplexity, last-word accuracy, token agreement.

Quality only: nothing here is timed, so a busy machine changes nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED

from qdeploy import evaluation, exporters, models, quantization, runtimes
from qdeploy.baseline import baseline_artifact
from qdeploy.calibration import CalibrationSource
from qdeploy.machine import describe

RUNTIME = {"onnx": "ort-cpu", "openvino": "openvino-cpu"}
SST2_DEV = str(SHARED / "data" / "sst2" / "dev.tsv")
TINYSTORIES = str(SHARED / "data" / "tinystories" / "valid-head.txt")
CASES = {
    "sst2": {
        "model": str(SHARED / "models" / "minilm-l6-sst2"), "task": "text-classification",
        "calibration": CalibrationSource(str(SHARED / "data" / "sst2" / "train-sample.tsv"), samples=128),
        "metrics": {"accuracy": SST2_DEV, "agreement": None},
        "methods": [("ort-dynamic", {}), *[("ort-static", {"calibration_method": m})
                                           for m in ("minmax", "entropy", "percentile")],
                    ("smoothquant", {}), ("smoothquant", {"alpha": "search"}), ("outlier", {}), ("nncf-ptq", {}),
                    ("nncf-smoothquant", {}), ("nncf-outlier", {}), ("fp8", {}), ("nncf-fp8", {})],
    },
    "default": {
        "model": None, "task": "feature-extraction", "calibration": CalibrationSource(),
        "metrics": {"cosine": None},
        "methods": [("ort-dynamic", {}), ("ort-static", {}), ("nncf-ptq", {}), ("nncf-weight-int8", {})],
    },
    "stories260k": {
        "model": str(SHARED / "models" / "stories260k"), "task": "text-generation",
        "calibration": CalibrationSource(TINYSTORIES, samples=128, seed=0, max_length=128, batch_size=8),
        "metrics": {"perplexity": TINYSTORIES, "lastword": TINYSTORIES, "token-agreement": None},
        "methods": [("nncf-weight-int8", {}), ("nncf-weight-int4", {}), ("ort-static", {"ffn_int8": True}),
                    ("smoothquant", {"ffn_down_int8": True}), ("outlier", {"threshold": 5.0}),
                    ("outlier", {"threshold": 6.0}), ("outlier", {"threshold": 8.0}), ("fp8", {})],
    },
}


def _label(method: str, options: dict) -> str:
    return method + "".join(f" {k}={v}" for k, v in options.items())


def _scores(session, ctx, metrics: dict, keep_reference: bool) -> dict[str, float]:
    out = {}
    for name, path in metrics.items():
        score = evaluation.metric(name).evaluate(session, ctx, path)
        if keep_reference and score.raw is not None:
            ctx.reference[name] = score.raw
        out[name] = round(float(score.value), 6)
    return out


def run_case(name: str, case: dict, work: Path) -> dict[str, dict[str, float]]:
    from transformers import AutoTokenizer

    from qdeploy.tasks import for_generation, task

    source = models.resolve(case["model"])
    generative = task(case["task"]).generative
    parents = {fmt: exporters.export(source, case["task"], fmt, work / name / fmt) for fmt in RUNTIME}
    tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    if generative:
        for_generation(tokenizer)
    feeds = ["input_ids", "attention_mask"] if generative else list(parents["onnx"].manifest.inputs)
    ctx = evaluation.EvalContext(tokenizer, feeds)
    fp32 = baseline_artifact(source, case["task"], list(parents["onnx"].manifest.inputs),
                             pad_token_id=int(tokenizer.pad_token_id or 0))
    table = {"pytorch fp32": _scores(runtimes.load(fp32, "torch"), ctx, case["metrics"], keep_reference=True)}
    for fmt, parent in parents.items():
        table[f"{fmt} fp32"] = _scores(runtimes.load(parent, RUNTIME[fmt]), ctx, case["metrics"], False)
    for i, (method, options) in enumerate(case["methods"]):
        t0 = time.perf_counter()
        parent = parents[quantization.method(method).input_format]
        artifact = quantization.quantize(parent, quantization.make_config(method, options),
                                         work / name / f"m{i}-{method}", case["calibration"])
        table[_label(method, options)] = _scores(runtimes.load(artifact, RUNTIME[artifact.format]), ctx,
                                                 case["metrics"], False)
        print(f"  {name}: {_label(method, options)} {table[_label(method, options)]} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return table


def markdown(numbers: dict) -> str:
    lines = [f"CPU: {numbers['machine']}", ""]
    for name, table in numbers["cases"].items():
        metrics = list(next(iter(table.values())))
        lines += [f"**{name}**", "", "| variant | " + " | ".join(metrics) + " |",
                  "|---|" + "---:|" * len(metrics)]
        lines += [f"| {variant} | " + " | ".join(f"{v[m]:.4f}" for m in metrics) + " |" for variant, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def compare(before: dict, after: dict) -> int:
    moved = 0
    for name, table in before["cases"].items():
        for variant, values in table.items():
            for metric, value in values.items():
                new = after["cases"].get(name, {}).get(variant, {}).get(metric)
                if new != value:
                    moved += 1
                    print(f"{name} / {variant} / {metric}: {value} -> {new}")
    print(f"{moved} numbers moved" if moved else "identical")
    return 1 if moved else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/behaviour-numbers.json")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(Path(p).read_text()) for p in args.compare))
    cpu = describe()
    isa = ", ".join(k for k, v in cpu["isa"].items() if v)
    numbers = {"machine": f"{cpu['cpu_model']} {cpu['cpu_generation']} ({isa}), {cpu['cores_physical']} cores, "
                          f"qdeploy {cpu['qdeploy_commit']}", "cases": {}}
    with tempfile.TemporaryDirectory() as work:
        for name in args.cases.split(","):
            numbers["cases"][name] = run_case(name, CASES[name], Path(work))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(numbers, indent=1), encoding="utf-8")
    print(markdown(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
