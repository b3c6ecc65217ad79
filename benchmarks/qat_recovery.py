"""What quantization-aware training recovers on the real SST-2 classifier: fp32, post-training static int8 and QAT
int8 of the same scheme, side by side on ONNX Runtime and OpenVINO, for NNCF's transformer scheme (w8a8) and with
every operator int8 (w8a8-all). Accuracy on all 872 GLUE SST-2 dev sentences; latency measured in the same run.

The post-training variants are the `qat`/`nncf-qat` methods with steps=0 (the fine-tune's own starting point); each
scheme is fine-tuned once on train-sample.tsv and both formats are exported from that one model.
"""
import argparse
import json
from pathlib import Path

from _common import SHARED

from qdeploy import pipeline, plan as plans
from qdeploy.evaluation.stats import mcnemar

TRAIN = SHARED / "data" / "sst2" / "train-sample.tsv"
DEV = SHARED / "data" / "sst2" / "dev.tsv"
# The fine-tune of each scheme: distillation from the fp32 model (every layer's states and the class distribution).
RECIPES = {
    "w8a8": {"epochs": 1, "lr": 2e-5, "distill": True},
    "w8a8-all": {"epochs": 3, "lr": 1e-4, "distill": True},
}
FORMATS = {"qat": ("ort-cpu", "onnx-fp32"), "nncf-qat": ("openvino-cpu", "openvino-fp32")}


def methods() -> list[dict]:
    specs = []
    for scheme, recipe in RECIPES.items():
        for method in FORMATS:
            specs.append({"name": method, "label": f"ptq-{scheme}-{method}", "options": {"scheme": scheme, "steps": 0}})
            specs.append({"name": method, "label": f"qat-{scheme}-{method}",
                          "options": {"scheme": scheme, "train": str(TRAIN), **recipe}})
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench-qat")
    parser.add_argument("--min-time-s", type=float, default=5.0)
    parser.add_argument("--min-reps", type=int, default=50)
    parser.add_argument("--paired-only", action="store_true",
                        help="skip the run: compare the artifacts of an earlier one sentence by sentence")
    args = parser.parse_args()
    if args.paired_only:
        print_paired(Path(args.out))
        return
    data = {**plans.default().to_dict(), "model": str(SHARED / "models" / "minilm-l6-sst2"),
            "task": "text-classification", "methods": methods(),
            "runtimes": ["torch", *(runtime for runtime, _ in FORMATS.values())],
            "calibration": {"source": str(TRAIN), "samples": 128, "seed": 0, "max_length": 128, "batch_size": 8},
            "eval": {"accuracy": str(DEV)}, "min_time_s": args.min_time_s, "min_reps": args.min_reps, "warmup": 10}
    report_path = pipeline.run(plans.from_dict(data), out=Path(args.out))
    report = json.loads((report_path.parent / "report.json").read_text())
    print_table(report)
    print_paired(Path(args.out))
    print(report_path)


def print_table(report: dict) -> None:
    rows = {(r["variant"], r["runtime"], r["batch"]): r for r in report["results"]}
    accuracy = {(v, rt): next((q["value"] for q in r["qualities"] if q["metric"] == "accuracy"), None)
                for (v, rt, _), r in rows.items()}
    batches = sorted({b for _, _, b in rows})
    print(f"{report['machine']['cpu_model']}, {report['settings']['threads']} threads, sequence length "
          f"{report['results'][0].get('seq_len')}; speed-up against the same runtime's fp32 graph")
    speed = "  ".join(f"{'b' + str(b) + ' ms':>8} {'x':>5}" for b in batches)
    print(f"{'scheme':9} {'variant':5} {'runtime':13} {'accuracy':>8}  {speed}")
    for scheme in ["fp32", *RECIPES]:
        for kind in (("fp32",) if scheme == "fp32" else ("ptq", "qat")):
            for method, (runtime, fp32) in FORMATS.items():
                variant = fp32 if scheme == "fp32" else f"{kind}-{scheme}-{method}"
                cells = []
                for b in batches:
                    row = rows.get((variant, runtime, b))
                    cells.append(f"{row['latency_ms']['p50']:>8.1f} {row.get('speedup_vs_runtime_fp32') or 1:>5.2f}"
                                 if row else f"{'-':>8} {'-':>5}")
                value = accuracy.get((variant, runtime))
                print(f"{scheme:9} {kind:5} {runtime:13} {value if value is None else f'{value:.4f}':>8}  "
                      + "  ".join(cells))
    for scheme in RECIPES:
        for method, (runtime, fp32) in FORMATS.items():
            base, ptq, qat = (accuracy.get((v, runtime)) for v in
                              (fp32, f"ptq-{scheme}-{method}", f"qat-{scheme}-{method}"))
            if None not in (base, ptq, qat):
                lost = base - ptq
                recovered = f"{(qat - ptq) / lost:.0%} of the loss" if lost > 0 else "no loss to recover"
                print(f"{scheme} on {runtime}: post-training {ptq - base:+.4f} vs fp32, QAT {qat - base:+.4f} "
                      f"({recovered})")


def print_paired(out: Path) -> None:
    """PTQ against QAT on the same dev sentences: how many each gets right that the other gets wrong, and the exact
    McNemar p-value, which says whether a gap of a few sentences is more than chance."""
    from transformers import AutoTokenizer

    from qdeploy import evaluation, runtimes
    from qdeploy.artifact import Artifact
    from qdeploy.evaluation.classification import predict, read_labelled

    texts, labels = read_labelled(DEV)
    for scheme in RECIPES:
        for method, (runtime, _) in FORMATS.items():
            right = {}
            for kind in ("ptq", "qat"):
                artifact = Artifact.load(out / "artifacts" / f"{kind}-{scheme}-{method}")
                ctx = evaluation.EvalContext(AutoTokenizer.from_pretrained(str(artifact.directory)),
                                             list(artifact.manifest.inputs))
                right[kind] = predict(runtimes.load(artifact, runtime), texts, ctx) == labels
            only_ptq, only_qat = int((right["ptq"] & ~right["qat"]).sum()), int((~right["ptq"] & right["qat"]).sum())
            print(f"{scheme} on {runtime}: {only_ptq} sentences right only after PTQ, {only_qat} only after QAT "
                  f"(of {len(labels)}); exact McNemar p = {mcnemar(only_ptq, only_qat):.3g}")


if __name__ == "__main__":
    main()
