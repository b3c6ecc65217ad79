"""Command-line mistakes are answered before any heavy library is imported: the error path's import set is read from
sys.modules in a fresh interpreter (a time would depend on the machine; the import set does not)."""
import json
import subprocess
import sys

import pytest

HEAVY = ("onnx", "onnxruntime", "torch", "openvino", "transformers", "nncf", "optimum")

PROBE = """
import json, sys
from qdeploy.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize("args,message", [
    (["quantize", "/no/such/artifact", "--method", "int3-magic", "--out", "x"], "unknown method 'int3-magic'"),
    (["quantize", "/no/such/artifact", "--method", "ort-dynamic,ort-static", "--out", "x"], "one method"),
    (["run", "--methods", "gptq"], "unknown method 'gptq'"),
    (["run", "--runtimes", "tensorflow"], "unknown runtime 'tensorflow'"),
    (["run", "--task", "summarization"], "unknown task 'summarization'"),
    (["run", "--eval", "nope=/x.tsv"], "unknown metric 'nope'"),
    (["run", "--methods", "ort-dynamic", "--option", "ort-dynamic.bogus=1"], "unknown option(s) bogus"),
    (["run", "--seq-len", "abc"], "invalid int value"),
    (["export", "--model", "x", "--format", "tflite", "--out", "y"], "invalid choice: 'tflite'"),
    (["bench", "/no/such/artifact", "--runtime", "nope"], "unknown runtime 'nope'"),
    (["inspect", "/no/such/artifact"], "is not a qdeploy artifact"),
    (["list", "bogus"], "unknown method 'bogus'"),
])
def test_command_line_errors_import_no_graph_or_model_library(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2 and message in proc.stderr, proc.stderr
    assert not set(HEAVY) & set(result["modules"]), sorted(set(HEAVY) & set(result["modules"]))
