"""Every user mistake answers with one line, exit code 2 and no traceback, before anything heavy is imported.

Each case runs in a real process (imports are what cost time). The bound is generous for a busy 2-core machine;
on an idle one every case here takes 0.1-0.4 s.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from .conftest import SST2_MODEL

BOUND_S = 3.0


def _qdeploy(*args, cwd):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "qdeploy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)
    return proc, time.perf_counter() - t0


def _cases(tmp_path, artifact) -> list[tuple[list, str]]:
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(SST2_MODEL / name, no_tokenizer / name)
    return [
        (["export", "--model", SST2_MODEL, "--format", "onnx", "--out", tmp_path], "already exists"),
        (["export", "--model", no_tokenizer, "--format", "onnx", "--out", tmp_path / "x"], "no tokenizer files"),
        (["export", "--model", SST2_MODEL, "--task", "feature-extraction", "--format", "onnx", "--out",
          tmp_path / "y"], "would drop it"),
        (["quantize", artifact, "--method", "ort-static", "--calibration", "nope.txt", "--out", tmp_path / "q"],
         "nope.txt does not exist"),
        (["bench", artifact, "--seq-len", "1024"], "beyond what"),
        (["bench", tmp_path / "nope"], "not a qdeploy artifact"),
        (["run", "--methods", "bogus", "--out", tmp_path / "r"], "bogus"),
        (["bench", artifact, "--runtimes", "ort-cpu,bogus"], "unknown runtime 'bogus'"),
        (["list", "bogus"], "unknown method 'bogus'"),
        (["bench", artifact, "--baseline", tmp_path / "nope"], "not a qdeploy artifact"),
        (["bench", artifact, "--baseline", "torch", "--rounds", "3"], "rounds must be >= 6"),
        (["quantize", artifact, "--methods", "ort-dynamic,ort-static", "--out", tmp_path / "q"], "one method"),
        (["quantize", artifact, "--method", "ort-static", "--option", "ort-dynamic.per_channel=false", "--out",
          tmp_path / "q"], "is for method ort-dynamic"),
        (["run", "--model", SST2_MODEL, "--tolerance", "accuracy=0.01", "--out", tmp_path / "r"],
         "tolerance names accuracy"),
    ]


def test_mistakes_answer_in_one_line_within_the_bound(tmp_path, sst2_onnx):
    for args, needle in _cases(tmp_path, sst2_onnx.directory):
        proc, seconds = _qdeploy(*args, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, proc.stderr)
        assert seconds < BOUND_S, (args, seconds)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["list"]])
def test_help_version_and_list_are_quick(tmp_path, args):
    proc, seconds = _qdeploy(*args, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    assert seconds < BOUND_S


def test_one_vocabulary_of_options():
    from qdeploy.cli import _own_options, build_parser

    assert _own_options(["ort-static.per_channel=false", "symmetric=true"], "ort-static") == [
        "per_channel=false", "symmetric=true"]
    parser = build_parser()
    for argv, key, value in ((["run", "--method", "ort-dynamic"], "methods", "ort-dynamic"),
                             (["run", "--runtime", "ort-cpu"], "runtimes", ["ort-cpu"]),
                             (["bench", "a", "--runtime", "ort-cpu"], "runtimes", ["ort-cpu"]),
                             (["bench", "a", "--json", "m.json"], "out", "m.json"),
                             (["quantize", "a", "--methods", "ort-static", "--out", "o"], "method", "ort-static")):
        assert getattr(parser.parse_args(argv), key) == value, argv


def test_list_method_shows_its_options(tmp_path):
    proc, seconds = _qdeploy("list", "ort-static", cwd=tmp_path)
    assert proc.returncode == 0 and seconds < BOUND_S, proc.stderr
    text = " ".join(proc.stdout.split())  # rich wraps long lines
    assert "options (--option ort-static.KEY=VALUE)" in text
    assert "calibration_method minmax|entropy|percentile, default minmax" in text
    assert "ffn_int8 true|false, default false: True also quantizes the feed-forward MatMuls" in text
