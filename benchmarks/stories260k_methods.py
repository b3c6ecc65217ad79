"""The seeds' table for a causal LM: one column per method (fp32, weight-only int8/int4, w8a8 static, w8a8 +
SmoothQuant, outlier thresholds 5/6/8, fp8 activations), perplexity and last-word accuracy in each cell, and the
generation speeds (TTFT, decode tokens/s) against PyTorch fp32 in the same run. stories260K is the one trained causal
LM available offline; pass --model for another."""
from _common import SHARED, run

TINYSTORIES = str(SHARED / "data" / "tinystories" / "valid-head.txt")
METHODS = [
    {"name": "nncf-weight-int8", "label": "weight-int8"},
    {"name": "nncf-weight-int4", "label": "weight-int4"},
    {"name": "ort-static", "label": "w8a8-static", "options": {"ffn_int8": True}},
    {"name": "smoothquant", "label": "w8a8-smoothquant", "options": {"ffn_down_int8": True}},
    {"name": "outlier", "label": "outlier-5", "options": {"threshold": 5.0}},
    {"name": "outlier", "label": "outlier-6", "options": {"threshold": 6.0}},
    {"name": "outlier", "label": "outlier-8", "options": {"threshold": 8.0}},
    {"name": "fp8", "label": "fp8-e4m3"},
]

if __name__ == "__main__":
    run({"model": str(SHARED / "models" / "stories260k"), "task": "text-generation", "methods": METHODS,
         "runtimes": ["torch", "ort-cpu", "openvino-cpu"], "batch_sizes": [1, 4], "seq_len": 128, "new_tokens": 64,
         "calibration": {"source": TINYSTORIES, "samples": 128, "seed": 0, "max_length": 128, "batch_size": 8},
         "eval": {"perplexity": TINYSTORIES, "lastword": TINYSTORIES}}, "runs/bench-stories260k")
