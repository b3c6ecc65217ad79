"""A plan on a local Ray instance (2 CPUs, two machine types declared as custom resources of its one node), started and
stopped here: the same report as the local executor, a killed worker that loses nothing, a GPU machine not run."""
import json
import os
import signal
import threading
import time
from dataclasses import replace

import psutil
import pytest

from qdeploy import pipeline
from qdeploy import plan as plans
from qdeploy.errors import InputError
from qdeploy.storage import Storage

from .conftest import SST2_DEV, SST2_MODEL

ray = pytest.importorskip("ray")

MACHINES = [{"name": "type-a", "resources": {"machine:a": 1}}, {"name": "type-b", "resources": {"machine:b": 1}},
            {"name": "gpu-box", "gpus": 1}]
# What does not depend on timing: every field of a row but the clocks, the memory and the process that measured it.
ROW_FIELDS = ("variant", "runtime", "format", "precision", "batch", "seq_len", "machine", "qualities", "quality",
              "size_mb")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if ray.is_initialized():
        ray.shutdown()
    # Workers take the environment Ray starts with: their node-local copies of fsspec storage go to a temporary place.
    os.environ["QDEPLOY_CACHE"] = str(tmp_path_factory.mktemp("node-cache"))
    ray.init(num_cpus=2, resources={"machine:a": 1, "machine:b": 1}, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "dev-48.tsv"
    path.write_text("".join(SST2_DEV.read_text().splitlines(keepends=True)[:49]))
    return path


def make_plan(eval_file, **changes):
    data = {"model": str(SST2_MODEL), "task": "text-classification", "methods": ["ort-dynamic", "nncf-weight-int8"],
            "runtimes": ["torch", "ort-cpu", "openvino-cpu"], "batch_sizes": [1], "seq_len": 32,
            "eval": {"accuracy": str(eval_file)}, "warmup": 1, "min_reps": 3, "min_time_s": 0.1,
            "machines": MACHINES, **changes}
    return plans.from_dict(data)


def rows(report):
    return sorted((json.dumps({k: r.get(k) for k in ROW_FIELDS}, sort_keys=True) for r in report["results"]))


@pytest.fixture(scope="module")
def both_reports(cluster, eval_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    local = pipeline.run(make_plan(eval_file), out=out / "local")
    on_ray = pipeline.run(make_plan(eval_file, executor="ray"), out=out / "ray")
    return [json.loads((path.parent / "report.json").read_text()) for path in (local, on_ray)], out


@pytest.mark.slow
def test_ray_report_equals_local_report(both_reports):
    (local, on_ray), out = both_reports
    assert on_ray["settings"]["executor"] == "ray" and local["settings"]["executor"] == "local"
    # 2 machine types x (baseline + 2 fp32 exports + 2 methods), each on its one runtime
    assert len(on_ray["results"]) == 10
    assert rows(on_ray) == rows(local)
    assert on_ray["variants"] == local["variants"]
    # the same cells not run; the reason names where it looked (this machine, or the cluster's nodes)
    def not_run(report):
        return [(s["variant"], s["runtime"], s.get("machine"), "GPU" in s["reason"]) for s in report["skipped"]]

    assert not_run(on_ray) == not_run(local) == [("(all)", "(all)", "gpu-box", True)]
    assert on_ray["metrics"] == local["metrics"] and on_ray["model"] == local["model"]
    for row in on_ray["results"]:  # each machine type's baseline was timed by the process that timed its variants
        assert row["baseline_same_process"] is True
    # one report per machine type and the cross-machine comparison with a column per type
    compare = json.loads((out / "ray" / "compare.json").read_text())
    assert [run["label"] for run in compare["runs"]] == ["type-a", "type-b"]
    assert all(set(row["by_run"]) == {"type-a", "type-b"} for row in compare["rows"])
    per_machine = json.loads((out / "ray" / "machines" / "type-b" / "report.json").read_text())
    assert {r["machine"] for r in per_machine["results"]} == {"type-b"}


@pytest.mark.slow
def test_gpu_machine_type_is_reported_not_run(both_reports):
    (_, on_ray), _ = both_reports
    gpu = [s for s in on_ray["skipped"] if s.get("machine") == "gpu-box"]
    assert len(gpu) == 1 and "GPU" in gpu[0]["reason"] and gpu[0]["reason"].startswith("not run")
    assert {r["machine"] for r in on_ray["results"]} == {"type-a", "type-b"}


def test_small_plan_on_ray_with_a_gpu_cell_not_run(cluster, eval_file, tmp_path):
    """The fast one: one method, one machine type plus a GPU one the cluster lacks."""
    plan = make_plan(eval_file, executor="ray", methods=["ort-dynamic"], runtimes=["torch", "ort-cpu"],
                     machines=[MACHINES[0], MACHINES[2]], storage=f"file://{tmp_path / 'shared-store'}")
    report = json.loads((pipeline.run(plan, out=tmp_path / "run").parent / "report.json").read_text())
    assert sorted((r["variant"], r["runtime"]) for r in report["results"]) == [
        ("onnx-fp32", "ort-cpu"), ("ort-dynamic", "ort-cpu"), ("pytorch-fp32", "torch")]
    assert all(r["quality"]["metric"] == "accuracy" and r["quality"]["fp32_value"] is not None
               for r in report["results"])
    (gpu,) = report["skipped"]
    assert gpu["machine"] == "gpu-box" and "no node of the Ray cluster" in gpu["reason"] and "GPU" in gpu["reason"]
    # The artifacts went to the fsspec storage, each complete with its manifest, and are named there in the report.
    assert {v["path"] for v in report["variants"]} == {f"{plan.storage}/onnx-fp32", f"{plan.storage}/ort-dynamic"}
    assert (tmp_path / "shared-store" / "ort-dynamic" / "manifest.json").is_file()


def _bench_workers():
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "_BenchWorker" in cmdline:
            found.append(proc)
    return found


@pytest.mark.slow
def test_killed_worker_loses_no_cell_and_reruns_none(cluster, eval_file, tmp_path):
    plan = make_plan(eval_file, executor="ray", methods=["ort-dynamic"], runtimes=["torch", "ort-cpu"],
                     machines=[MACHINES[0]], min_time_s=1.5, batch_sizes=[1, 2])
    out = tmp_path / "run"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("path", pipeline.run(plan, out=out)))
    runner.start()
    killed, before = None, {}
    deadline = time.monotonic() + 600
    while runner.is_alive() and time.monotonic() < deadline and killed is None:
        finished = sorted((out / "cells").glob("bench-*.json")) if (out / "cells").is_dir() else []
        workers = _bench_workers()
        if finished and workers:  # the first bench cell is done and the actor is timing the next one
            before = {p.name: p.read_text() for p in finished}
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    runner.join(timeout=900)
    assert killed is not None, "no bench worker was seen running"
    report = json.loads((out / "report.json").read_text())
    keys = [(r["variant"], r["runtime"], r["batch"]) for r in report["results"]]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 3 * 2  # every cell, each once
    assert not report["skipped"]
    for name, text in before.items():  # cells finished before the kill were not run again
        assert (out / "cells" / name).read_text() == text
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    # the restarted worker is another process, and the report says its rows' baseline was timed elsewhere
    assert len({r["session"] for r in report["results"]}) == 2
    assert any(r["baseline_same_process"] is False for r in report["results"])


def test_storage_uri_verifies_what_it_fetches(tmp_path, sst2_onnx, monkeypatch):
    monkeypatch.setenv("QDEPLOY_CACHE", str(tmp_path / "node-cache"))
    storage = Storage(f"file://{tmp_path / 'remote'}")
    assert storage.existing("onnx-fp32") is None
    import shutil

    shutil.copytree(sst2_onnx.directory, storage.build_path("onnx-fp32"))
    storage.publish("onnx-fp32")
    assert (tmp_path / "remote" / "onnx-fp32" / "manifest.json").is_file()
    shutil.rmtree(storage.local_path("onnx-fp32"))  # another node: nothing local yet
    assert storage.fetch("onnx-fp32").manifest.files == sst2_onnx.manifest.files
    shutil.rmtree(storage.local_path("onnx-fp32"))
    changed = tmp_path / "remote" / "onnx-fp32" / "tokenizer.json"
    changed.write_bytes(changed.read_bytes().replace(b'"[CLS]"', b'"[CLX]"', 1))  # changed in the shared store
    with pytest.raises(InputError, match="sha256"):
        storage.fetch("onnx-fp32")
    assert not storage.local_path("onnx-fp32").exists()  # nothing half-fetched is left to be run


def test_plan_machines_are_checked():
    with pytest.raises(Exception, match="more than once"):
        plans.from_dict({"machines": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(Exception, match="positive numbers"):
        plans.from_dict({"machines": [{"name": "a", "resources": {"machine:a": 0}}]})
    with pytest.raises(Exception, match="executor: ray"):
        plans.from_dict({"address": "head:6379"})
    plan = plans.from_dict({"executor": "ray", "machines": MACHINES})
    assert plans.from_dict(plan.to_dict()) == plan
    assert replace(plan, retries=0).retries == 0


def test_auto_evaluates_candidates_as_parallel_tasks(cluster, sst2_onnx, eval_file, tmp_path):
    from qdeploy import quantization
    from qdeploy.calibration import CalibrationSource
    from qdeploy.executors.ray_cluster import map_on_this_node

    config = quantization.make_config("auto", {"eval": str(eval_file), "tolerance": 0.05, "mode": "dynamic"})
    artifact = quantization.quantize(sst2_onnx, config, tmp_path / "auto", CalibrationSource(samples=8),
                                     parallel_map=map_on_this_node)
    result = artifact.manifest.method["result"]  # what the search recorded
    assert result["met"] and result["tolerance"] == 0.05, result
    assert result["parallel"] >= 2  # candidates ran as parallel Ray tasks
    assert len(result["tried"]) >= 2  # a whole wave was evaluated, not one candidate


def test_unreachable_cluster_is_one_clear_error(tmp_path):
    import subprocess
    import sys

    # A process of its own: this one is already connected to the tests' cluster.
    proc = subprocess.run([sys.executable, "-m", "qdeploy", "run", "--model", str(SST2_MODEL), "--task",
                           "text-classification", "--methods", "ort-dynamic", "--executor", "ray", "--address",
                           "127.0.0.1:1", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "no Ray cluster answers at 127.0.0.1:1" in err, err
    assert len(err.splitlines()) == 1, err


def test_run_flags_map_onto_the_plan_keys():
    from qdeploy.cli import build_parser
    from qdeploy.cli_run import _plan_from_args

    args = build_parser().parse_args(["run", "--executor", "ray", "--address", "head:6379", "--storage",
                                      "s3://bucket/runs", "--retries", "1"])
    plan = _plan_from_args(args)
    assert (plan.executor, plan.address, plan.storage, plan.retries) == ("ray", "head:6379", "s3://bucket/runs", 1)
    assert plans.from_dict(plan.to_dict()) == plan
