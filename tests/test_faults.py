"""Bad input, faults and safety (issue: nothing lost, nothing let in), each with real files made in the test."""
import json
import resource
import signal
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdeploy.artifact import Artifact, Manifest, finalize
from qdeploy.cli import main
from qdeploy.errors import InputError

from .conftest import SST2_DEV, SST2_MODEL, STORIES


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def one_line_error(code, err, needle):
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert needle in err and "Traceback" not in err


@pytest.fixture()
def model_copy(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(SST2_MODEL, target)
    return target


def test_directory_without_config(capsys, tmp_path):
    (tmp_path / "empty-model").mkdir()
    code, err = run_cli(capsys, "export", "--model", tmp_path / "empty-model", "--format", "onnx",
                        "--out", tmp_path / "o")
    one_line_error(code, err, "has no config.json")


def test_truncated_weights(capsys, model_copy, tmp_path):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run_cli(capsys, "export", "--model", model_copy, "--format", "onnx", "--out", tmp_path / "o")
    one_line_error(code, err, "is truncated")


def test_corrupt_weights(capsys, model_copy, tmp_path):
    (model_copy / "model.safetensors").write_bytes(b"\xff" * 4096)
    code, err = run_cli(capsys, "export", "--model", model_copy, "--format", "onnx", "--out", tmp_path / "o")
    one_line_error(code, err, "is corrupt")


def test_pickle_weights_refused_unless_allowed(capsys, model_copy, tmp_path):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model_copy / "model.safetensors"), model_copy / "pytorch_model.bin")
    (model_copy / "model.safetensors").unlink()
    code, err = run_cli(capsys, "export", "--model", model_copy, "--task", "text-classification", "--format", "onnx",
                        "--out", tmp_path / "o")
    one_line_error(code, err, "pass --allow-pickle")
    code, err = run_cli(capsys, "export", "--model", model_copy, "--task", "text-classification", "--format", "onnx",
                        "--out", tmp_path / "o", "--allow-pickle")
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["source"]["pickle"] is True


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    (b"", "holds no text samples"),
    ("caf\xe9 au lait\n".encode("latin-1"), "is not UTF-8"),
])
def test_bad_calibration_files(capsys, tmp_path, content, needle):
    path = tmp_path / "cal.txt"
    if content is not None:
        path.write_bytes(content)
    code, err = run_cli(capsys, "run", "--model", SST2_MODEL, "--task", "text-classification", "--methods",
                        "ort-static", "--calibration", path, "--out", tmp_path / "o")
    one_line_error(code, err, needle)


def test_calibration_column_missing(capsys, tmp_path):
    path = tmp_path / "cal.tsv"
    path.write_text("sentence\tlabel\na fine film\t1\n")
    code, err = run_cli(capsys, "run", "--model", SST2_MODEL, "--task", "text-classification", "--methods",
                        "ort-static", "--calibration", f"{path}:review", "--out", tmp_path / "o")
    one_line_error(code, err, "has no column 'review'")


@pytest.mark.parametrize("content,needle", [
    (b"text\tstars\ngreat\t5\n", "needs columns 'sentence' (or 'text') and 'label'"),
    (b"sentence\tlabel\n", "holds no labelled rows"),
    (b"sentence\tlabel\nna\xefve\t1\n", "is not UTF-8"),
    (b"sentence\tlabel\ngood\tpositive\n", "expected an integer class id"),
])
def test_bad_evaluation_files(capsys, tmp_path, content, needle):
    path = tmp_path / "dev.tsv"
    path.write_bytes(content)
    code, err = run_cli(capsys, "run", "--model", SST2_MODEL, "--task", "text-classification",
                        "--eval", f"accuracy={path}", "--out", tmp_path / "o")
    one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


def test_task_the_architecture_lacks_from_the_cli(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--model", STORIES, "--task", "text-classification", "--out", tmp_path / "o")
    one_line_error(code, err, "LlamaForCausalLM was trained for text-generation; --task text-classification would "
                              "give it an untrained text-classification head")
    assert not (tmp_path / "o").exists()


def test_export_quantize_bench_chain(capsys, tmp_path):
    code, err = run_cli(capsys, "export", "--model", SST2_MODEL, "--task", "text-classification", "--format", "onnx",
                        "--out", tmp_path / "fp32")
    assert code == 0, err
    code, err = run_cli(capsys, "quantize", tmp_path / "fp32", "--method", "ort-dynamic", "--option",
                        "per_channel=false", "--out", tmp_path / "int8")
    assert code == 0, err
    assert json.loads((tmp_path / "int8" / "manifest.json").read_text())["method"]["config"]["per_channel"] is False
    code, err = run_cli(capsys, "bench", tmp_path / "int8", "--batch-sizes", "1", "--seq-len", "16", "--min-reps",
                        "3", "--min-time-s", "0", "--warmup", "0")
    assert code == 0 and "ort-cpu" in err
    code, err = run_cli(capsys, "bench", tmp_path / "int8", "--runtime", "openvino-cpu")
    one_line_error(code, err, "runtime openvino-cpu cannot run onnx artifacts")


def test_onnx_external_data_outside_the_directory_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    artifact_dir = tmp_path / "artifact"
    artifact_dir.mkdir()
    weight = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    with open(artifact_dir / "model.onnx", "wb") as fh:
        fh.write(helper.make_model(graph).SerializeToString())
    finalize(artifact_dir, Manifest(format="onnx", model_file="model.onnx", precision="fp32", task="x", source={}))
    with pytest.raises(InputError, match="escapes the artifact directory"):
        Artifact.load(artifact_dir)


def test_manifest_listing_etc_passwd_is_refused(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    manifest = Manifest(format="onnx", model_file="model.onnx", precision="fp32", task="x", source={},
                        files={"../../etc/passwd": "0" * 64})
    (tmp_path / "a" / "manifest.json").write_text(manifest.to_json())
    code, err = run_cli(capsys, "bench", tmp_path / "a")
    one_line_error(code, err, "escapes the artifact directory")


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 2**20, 4 * 2**20))


def test_disk_full_during_export_leaves_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qdeploy", "export", "--model", SST2_MODEL, "--task",
                           "text-classification", "--format", "onnx", "--out", tmp_path / "o"],
                          capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # Progress lines may come first; the error is one line, the last, with no traceback.
    assert "disk is full" in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _small_run_args(out, dev):
    return [sys.executable, "-m", "qdeploy", "run", "--model", str(SST2_MODEL), "--task", "text-classification",
            "--methods", "ort-dynamic,ort-static", "--runtimes", "torch,ort-cpu", "--eval", f"accuracy={dev}",
            "--batch-sizes", "1", "--seq-len", "16", "--warmup", "1", "--min-reps", "5", "--min-time-s", "0.5",
            "--calibration-samples", "16",
            "--out", str(out)]


def _start_and_kill_when(args, condition, sig=signal.SIGKILL, timeout=300):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _no_incomplete_artifacts(out):
    for path in (out / "artifacts").iterdir():
        assert path.name.startswith(".tmp-") or (path / "manifest.json").is_file(), path


def _stable(report):
    """The fields of a report that do not depend on timing."""
    rows = sorted((r["variant"], r["runtime"], r["batch"], r["seq_len"], r["precision"], r["size_mb"],
                   json.dumps(r["qualities"], sort_keys=True)) for r in report["results"])
    variants = sorted(json.dumps({k: v for k, v in v.items()}, sort_keys=True) for v in report["variants"])
    plan = {k: v for k, v in report["plan"].items() if k != "out"}  # the two runs were told different --out
    return rows, variants, plan, report["model"], sorted(map(json.dumps, report["skipped"]))


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    dev = tmp_path / "dev.tsv"
    dev.write_text("\n".join(SST2_DEV.read_text(encoding="utf-8").splitlines()[:101]) + "\n")
    reference = tmp_path / "reference"
    subprocess.run(_small_run_args(reference, dev), check=True, capture_output=True, timeout=600)

    out = tmp_path / "killed"
    args = _small_run_args(out, dev)
    quantizing = lambda: any(p.name.startswith(".tmp-ort-static") for p in (out / "artifacts").glob(".tmp-*"))
    code, _ = _start_and_kill_when(args, quantizing)
    assert code == -signal.SIGKILL
    _no_incomplete_artifacts(out)
    assert not (out / "artifacts" / "ort-static").exists()

    resume = [sys.executable, "-m", "qdeploy", "run", "--resume", str(out)]
    measuring = lambda: len(list((out / "cells").glob("bench-*.json"))) >= 2
    code, _ = _start_and_kill_when(resume, measuring)
    assert code == -signal.SIGKILL
    _no_incomplete_artifacts(out)
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("bench-*.json")}
    assert len(finished) >= 2

    proc = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, mtime in finished.items():  # finished cells were re-used, not recomputed
        assert (out / "cells" / name).stat().st_mtime_ns == mtime
    got = json.loads((out / "report.json").read_text())
    want = json.loads((reference / "report.json").read_text())
    assert _stable(got) == _stable(want)
    assert len(got["settings"]["sessions"]) >= 2
    # Latencies came from two processes, but every speed-up comes from the one speed cell's interleaved rounds.
    assert all(r["baseline_same_process"] for r in got["results"])


def test_ctrl_c_exits_130_and_keeps_nothing_half_written(tmp_path):
    out = tmp_path / "o"
    args = [sys.executable, "-m", "qdeploy", "export", "--model", str(SST2_MODEL), "--task", "text-classification",
            "--format", "openvino", "--out", str(out)]
    code, err = _start_and_kill_when(args, lambda: any(tmp_path.glob(".tmp-*")), sig=signal.SIGINT)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_inspect_lists_every_layer(capsys, tmp_path):
    run_dir = tmp_path / "artifacts"
    assert run_cli(capsys, "export", "--model", SST2_MODEL, "--task", "text-classification", "--format", "onnx",
                   "--out", run_dir / "onnx-fp32")[0] == 0
    assert run_cli(capsys, "quantize", run_dir / "onnx-fp32", "--method", "ort-static", "--calibration-samples", "16",
                   "--out", run_dir / "ort-static")[0] == 0
    code = main(["inspect", str(run_dir / "ort-static"), "--calibration-samples", "16"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    result = json.loads(open(out).read())
    assert result["total"] == 36 and result["quantized"] == 24  # the 12 feed-forward layers stay float
    ffn = [l for l in result["layers"] if "intermediate" in l["layer"] or "output/dense" in l["layer"]
           and "attention" not in l["layer"]]
    assert ffn and not any(l["quantized"] for l in ffn)
    assert all(l["activation_scale"] for l in result["layers"] if l["quantized"])
    assert not (run_dir / "ort-static" / "inspect.json").exists()


def test_unknown_option_from_the_cli(capsys, tmp_path):
    code, err = run_cli(capsys, "run", "--methods", "ort-static", "--option", "ort-static.bogus=1", "--out",
                        tmp_path / "o")
    one_line_error(code, err, "unknown option(s) bogus; allowed: ")


def test_internal_error_exits_1_with_a_log(capsys, tmp_path, monkeypatch):
    from qdeploy import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("something qdeploy did not expect")

    monkeypatch.setattr(pipeline, "run", broken)
    code = main(["run", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "internal error: RuntimeError: something qdeploy did not expect" in err[-1]
    log = err[-1].split("traceback in ")[1].rstrip(")")
    assert "Traceback" in open(log).read() and "Traceback" not in "\n".join(err)
