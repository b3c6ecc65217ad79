"""The GPU matrix: fp32, fp16 and symmetric int8 QDQ (the TensorRT preset) of the SST-2 classifier on ONNX Runtime's
CUDA and TensorRT execution providers, against PyTorch eager fp32 (on the CPU: qdeploy's torch runtime is CPU-only),
with accuracy on the GLUE SST-2 dev set. On the GPU runtimes inputs and outputs stay on the device (I/O binding)
for the model-only timing; the end-to-end timing includes tokenization and the host-device copies.

Exits with code 2 and a one-line reason on a machine where neither provider is present.
"""
import sys

from qdeploy import runtimes

GPU_RUNTIMES = ("ort-cuda", "ort-tensorrt")


def available_gpu_runtimes() -> tuple[list[str], dict[str, str]]:
    reasons = {name: runtimes.get(name).unavailable_reason() for name in GPU_RUNTIMES}
    return [name for name, reason in reasons.items() if reason is None], reasons


if __name__ == "__main__":
    usable, reasons = available_gpu_runtimes()
    if not usable:
        print("gpu_matrix: no GPU execution provider here (" + "; ".join(f"{n}: {r}" for n, r in reasons.items())
              + "); install onnxruntime-gpu on a machine with an NVIDIA GPU", file=sys.stderr)
        sys.exit(2)
    from _common import SHARED, run

    run({"model": str(SHARED / "models" / "minilm-l6-sst2"), "task": "text-classification",
         "methods": [{"name": "fp16", "options": {}}, {"name": "ort-static", "options": {"preset": "tensorrt"}}],
         "runtimes": ["torch", *usable], "batch_sizes": [1, 8, 32], "timing": ["model", "end-to-end"],
         "eval": {"accuracy": str(SHARED / "data" / "sst2" / "dev.tsv")}}, "runs/bench-gpu")
