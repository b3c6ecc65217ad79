"""qdeploy's int8 variants against the obvious alternatives, on all-MiniLM-L6-v2, in one process run.

Compared, all on the same real-text inputs (batch 8, 128 tokens by default), each as a ratio to PyTorch eager fp32
measured in this run: PyTorch dynamic int8 (torch.ao), optimum's ORTQuantizer with its avx512_vnni dynamic default,
OpenVINO + NNCF with default parameters, and qdeploy's ort-dynamic, ort-static and nncf-ptq. Quality: mean cosine of
mean-pooled embeddings to PyTorch fp32 on qdeploy's held-out sentences.

Needs the peers extra: `pip install -c constraints.txt -e '.[full,demo,peers]'`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--min-time-s", type=float, default=5.0)
    parser.add_argument("--out", default="runs/bench-peers.json")
    args = parser.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    from qdeploy import evaluation, exporters, machine, models, quantization, runtimes
    from qdeploy.benchmarking import LatencyScenario, benchmark_inputs, measure_latency
    from qdeploy.evaluation.embeddings import mean_pool

    source = models.resolve(None)
    tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    inputs = benchmark_inputs(tokenizer, names, args.batch, args.seq_len)
    scenario = LatencyScenario(warmup=10, min_reps=30, min_time_s=args.min_time_s)
    ctx = evaluation.EvalContext(tokenizer, names)
    heldout = evaluation.heldout_texts()
    threads = machine.describe()["cores_physical"]
    torch.set_num_threads(threads)

    def embeddings(run) -> np.ndarray:
        return np.concatenate([mean_pool(run(batch), batch["attention_mask"])
                               for batch in evaluation.encode(heldout, ctx)])

    results, reference = [], None

    def record(name: str, run) -> None:
        nonlocal reference
        vectors = embeddings(run)
        reference = vectors if reference is None else reference
        a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        m = measure_latency(run, inputs, scenario)
        results.append({"name": name, "p50_ms": m.latency_ms["p50"], "cv": m.cv,
                        "cosine": float((a * b).sum(1).mean())})
        print(f"  {name:42} p50 {m.latency_ms['p50']:8.2f} ms  cv {m.cv:.1%}", flush=True)

    model = AutoModel.from_pretrained(str(source.path)).eval()

    def torch_run(m):
        def run(batch):
            with torch.inference_mode():
                return m(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
        return run

    record("PyTorch eager fp32 (baseline)", torch_run(model))
    record("PyTorch dynamic int8 (torch.ao)", torch_run(torch.ao.quantization.quantize_dynamic(
        model, {torch.nn.Linear}, dtype=torch.qint8)))

    with tempfile.TemporaryDirectory(prefix="qdeploy-peers-") as tmp:
        tmp = Path(tmp)
        try:
            from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
            from optimum.onnxruntime.configuration import AutoQuantizationConfig

            ort_model = ORTModelForFeatureExtraction.from_pretrained(str(source.path), export=True)
            quantizer = ORTQuantizer.from_pretrained(ort_model)
            quantizer.quantize(save_dir=tmp / "optimum", quantization_config=AutoQuantizationConfig.avx512_vnni(
                is_static=False, per_channel=False))
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(next((tmp / "optimum").glob("*quantized*.onnx"))), options,
                                           providers=["CPUExecutionProvider"])
            record("optimum ORTQuantizer avx512_vnni (dynamic)", lambda b: session.run(None, b)[0])
        except ImportError:
            print("  optimum is not installed: pip install -e '.[peers]' to include it")

        onnx_fp32 = exporters.export(source, "feature-extraction", "onnx", tmp / "onnx-fp32")
        ov_fp32 = exporters.export(source, "feature-extraction", "openvino", tmp / "openvino-fp32")
        import nncf
        import openvino as ov

        from qdeploy.calibration import CalibrationSource

        calibration = CalibrationSource()
        dataset = calibration.nncf_dataset(tokenizer, names)
        default = nncf.quantize(ov.Core().read_model(str(ov_fp32.model_path)), dataset)
        compiled = ov.Core().compile_model(default, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                            "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        record("OpenVINO + NNCF quantize() defaults", lambda b: np.array(request.infer(b)[compiled.outputs[0]]))

        for method, parent, runtime in (("ort-dynamic", onnx_fp32, "ort-cpu"), ("ort-static", onnx_fp32, "ort-cpu"),
                                        ("nncf-ptq", ov_fp32, "openvino-cpu")):
            artifact = quantization.quantize(parent, quantization.make_config(method), tmp / method, calibration)
            session_q = runtimes.load(artifact, runtime, threads)
            record(f"qdeploy {method} ({runtime})", lambda b, s=session_q: s.run(b)["last_hidden_state"])

    base = results[0]["p50_ms"]
    description = machine.describe()
    print(f"\n{description['cpu_model']}, {threads} threads, batch {args.batch}, seq {args.seq_len}; "
          "speed-up = PyTorch fp32 p50 / p50, same process")
    print(f"{'variant':44} {'p50 ms':>9} {'speed-up':>9} {'cosine':>8}")
    for r in results:
        r["speedup_vs_torch_fp32"] = round(base / r["p50_ms"], 3)
        print(f"{r['name']:44} {r['p50_ms']:9.2f} {r['speedup_vs_torch_fp32']:8.2f}x {r['cosine']:8.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": description, "batch": args.batch, "seq_len": args.seq_len,
                               "results": results}, indent=2))
    print(out)


if __name__ == "__main__":
    main()
