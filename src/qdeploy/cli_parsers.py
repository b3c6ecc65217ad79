"""Every subcommand's flags, description and examples. The examples run as printed from the project's root (with
`../shared` beside it) and one after another: `export` makes what `quantize`, `bench`, `inspect` and `package` use;
tests/test_cli_help.py parses every one and, marked slow, runs them."""
from __future__ import annotations

import argparse

from .cli_run import _add_run, _csv

TASK_HELP = ("auto (default: from the model's config.json) | feature-extraction | text-classification | "
             "text-generation | text2text-generation")

EXAMPLES = {
    "export": """
  qdeploy export --model ../shared/models/minilm-l6-sst2 --format onnx --out sst2-onnx
  qdeploy export --model ../shared/models/minilm-l6-sst2 --task feature-extraction --drop-head --format openvino --out sst2-encoder-ov
  qdeploy export --model ../shared/models/stories260k --format openvino --out stories-ov
""",  # noqa: E501 (one command a line, to copy and run)
    "quantize": """
  qdeploy quantize sst2-onnx --method ort-static --calibration ../shared/data/sst2/train-sample.tsv:sentence --out sst2-static
  qdeploy quantize sst2-onnx --method ort-dynamic --option per_channel=false --out sst2-dynamic
  qdeploy quantize stories-ov --method nncf-weight-int8 --out stories-int8
""",  # noqa: E501 (one command a line, to copy and run)
    "bench": """
  qdeploy bench sst2-static --baseline torch --batch-sizes 1 --seq-len 64
  qdeploy bench sst2-static sst2-dynamic --baseline sst2-onnx --runtimes ort-cpu --batch-sizes 1,8 --out bench.json
""",  # noqa: E501 (one command a line, to copy and run)
    "package": """
  qdeploy package sst2-static --out sst2-static.tar.gz
  qdeploy package runs/today --recommended --batch 1 --out ship
""",  # noqa: E501 (one command a line, to copy and run)
    "compare": """
  qdeploy compare runs/zen3 runs/xeon --out compare
""",  # noqa: E501 (one command a line, to copy and run)
    "inspect": """
  qdeploy inspect sst2-static --calibration ../shared/data/sst2/dev.tsv:sentence --out sst2-static.layers.json
""",  # noqa: E501 (one command a line, to copy and run)
    "list": """
  qdeploy list
  qdeploy list ort-static
""",  # noqa: E501 (one command a line, to copy and run)
}


def _sub(sub, name: str, help: str, description: str):
    return sub.add_parser(name, help=help, description=description, epilog="examples:" + EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_commands(sub) -> None:
    _add_run(sub)
    p = _sub(sub, "export", "export a model to ONNX or OpenVINO IR, validated against PyTorch",
             "Export a PyTorch model to ONNX or OpenVINO IR and check the result against PyTorch on real sentences; "
             "an export beyond tolerance fails and leaves nothing behind.")
    p.add_argument("--model", metavar="ID_OR_DIR",
                   help="local model directory, .gguf file or hub id (default: all-MiniLM-L6-v2; "
                        "SmolLM2-135M-Instruct for text-generation)")
    p.add_argument("--task", default="auto", metavar="auto|TASK", help=TASK_HELP)
    p.add_argument("--drop-head", action="store_true",
                   help="with --task feature-extraction on a model that has a task head: export the encoder alone")
    p.add_argument("--format", required=True, choices=["onnx", "openvino"], help="the artifact's format")
    p.add_argument("--out", required=True, metavar="DIR", help="artifact directory to create")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default per architecture, 17)")
    p.add_argument("--stateless", action="store_true",
                   help="text-generation to OpenVINO: KV cache as inputs/outputs instead of OpenVINO state")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load pytorch_model.bin (pickle, which can run code) when the model has no safetensors")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the Python code the model repository ships (only for repositories you trust)")

    p = _sub(sub, "quantize", "quantize an fp32 artifact with one method",
             "Make a quantized artifact from an fp32 one with one method; `qdeploy list METHOD` shows its options.")
    p.add_argument("artifact", metavar="ARTIFACT", help="an artifact directory made by `qdeploy export`")
    p.add_argument("--method", "--methods", dest="method", required=True, metavar="NAME",
                   help="the one quantization method (see `qdeploy list`)")
    p.add_argument("--option", action="append", metavar="[METHOD.]KEY=VALUE",
                   help="a method option, e.g. per_channel=false or ort-static.per_channel=false (repeatable)")
    p.add_argument("--calibration", default="builtin", metavar="SPEC",
                   help="builtin, a text/TSV/CSV/JSONL file, or FILE:COLUMN")
    p.add_argument("--calibration-samples", type=int, metavar="N", default=128,
                   help="number of calibration samples (default 128)")
    p.add_argument("--out", required=True, metavar="DIR", help="artifact directory to create")

    p = _sub(sub, "bench", "measure latency of artifacts on their runtimes, and their speed-up over a baseline",
             "Latency percentiles of each artifact on each runtime. With --baseline, also each one's speed-up over "
             "the baseline from interleaved rounds (the same ratio and 95 % interval as `qdeploy run`).")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="artifact directories")
    p.add_argument("--baseline", metavar="torch|ARTIFACT",
                   help="torch: the PyTorch model the first artifact was exported from; or an artifact directory")
    p.add_argument("--runtimes", "--runtime", dest="runtimes", type=_csv(str), metavar="R1,R2",
                   help="comma-separated runtimes (default: every available runtime that supports the artifact)")
    p.add_argument("--batch-sizes", type=_csv(int), metavar="1,8", default=[1, 8],
                   help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--seq-len", type=int, metavar="N", default=128, help="tokens per input (default 128)")
    p.add_argument("--threads", type=int, metavar="N", help="threads per session (default: physical cores)")
    p.add_argument("--warmup", type=int, metavar="N", default=5, help="warm-up calls before timing (default 5)")
    p.add_argument("--min-reps", type=int, metavar="N", default=20,
                   help="minimum timed calls per measurement (default 20)")
    p.add_argument("--min-time-s", type=float, metavar="S", default=2.0,
                   help="minimum timed seconds per measurement (default 2)")
    p.add_argument("--rounds", type=int, metavar="N", default=15,
                   help="with --baseline: interleaved timing rounds (default 15, at least 6)")
    p.add_argument("--new-tokens", type=int, metavar="N",
                   help="text-generation: tokens decoded per request in the generation benchmark (default 64)")
    p.add_argument("--timing", type=_csv(str), metavar="model[,end-to-end]", default=["model"],
                   help="model and/or end-to-end (see `run --help`)")
    p.add_argument("--out", "--json", dest="out", metavar="FILE",
                   help="also write the measurements as JSON (with stdev, cv, what was timed and the speed-ups)")

    p = _sub(sub, "package", "make a self-contained deployment directory or .tar.gz from an artifact",
             "Copy an artifact with its manifest, its measurements and a README for its user into a directory or "
             "a .tar.gz, verified on the way.")
    p.add_argument("artifact", metavar="ARTIFACT",
                   help="an artifact directory (e.g. runs/<run>/artifacts/ort-static), or with "
                        "--recommended a run directory")
    p.add_argument("--recommended", action="store_true", help="package the artifact the run's report recommends")
    p.add_argument("--batch", type=int, metavar="N",
                   help="with --recommended: the batch size whose recommendation to take")
    p.add_argument("--out", required=True, metavar="DIR|FILE.tar.gz",
                   help="directory to create, or a name ending in .tar.gz")
    p.add_argument("--report", metavar="REPORT.json",
                   help="report.json whose measurements to include (default: the artifact's run)")

    p = _sub(sub, "compare", "merge the reports of several runs (machines, runtimes, threads) into one",
             "Put several runs' reports side by side, one recommendation per machine.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories holding report.json")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory for compare.json, compare.md and compare.html")

    p = _sub(sub, "inspect", "per layer: the layer plan (weights, activations, why float), then activation max and "
                             "simulated int8 SQNR",
             "First the artifact's layer plan: for each Linear layer, its weights, activations, granularity and why "
             "it is float (layers.json, or read from the graph). Then, for an ONNX artifact whose fp32 parent sits "
             "beside it: its activations' range and outliers on real text, and the signal-to-noise ratio int8 would "
             "give it.")
    p.add_argument("artifact", metavar="ARTIFACT",
                   help="an ONNX or OpenVINO artifact (for the activation analysis: ONNX, with its fp32 parent beside "
                        "it, as in a run)")
    p.add_argument("--calibration", default="builtin", metavar="SPEC",
                   help="text to measure activations on (as for quantize)")
    p.add_argument("--calibration-samples", type=int, metavar="N", default=64, help="number of samples (default 64)")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the JSON (default: <artifact>.inspect.json beside the artifact)")

    p = _sub(sub, "list", "methods, runtimes, metrics, tasks and architectures qdeploy knows",
             "What qdeploy can do here: methods, runtimes (and why one is unavailable), metrics with their "
             "tolerances, tasks and architectures; with a METHOD, that method's options.")
    p.add_argument("method", nargs="?", metavar="METHOD",
                   help="a method: its options with their types, defaults and notes")
