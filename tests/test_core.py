"""Plans, typed configs, artifacts and the machine description: fast, no models."""
import json
import os

import pytest

from qdeploy import machine, plan as plans
from qdeploy.artifact import Artifact, Manifest, finalize, safe_join, staging
from qdeploy.calibration import CalibrationSource
from qdeploy.errors import ConfigError, InputError


def test_default_plan_round_trips():
    plan = plans.default()
    assert plan.model is None and plan.task == "auto"
    assert plan.methods is None and plan.to_dict()["methods"] == "default"  # the task's own, once it is known
    assert plan.batch_sizes == (1, 8) and plan.seq_len == 128
    assert plans.from_dict(plan.to_dict()) == plan


def test_each_task_has_its_default_methods():
    """A language model gets only recipes that keep it within 3 LAMBADA points (README, "A real language model"):
    no int8 activations, which collapse SmolLM2-135M."""
    from qdeploy import quantization
    from qdeploy.tasks import task

    assert task("feature-extraction").methods == ("ort-dynamic", "ort-static", "openvino-bf16", "nncf-ptq",
                                                  "nncf-weight-int8")
    generation = task("text-generation").methods
    assert "ort-dynamic" not in generation and "ort-static" not in generation
    for name in generation:
        assert quantization.method(name).name == name  # every one is registered


def test_plan_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match="unknown option.*batchsize"):
        plans.from_dict({"batchsize": [1]})
    with pytest.raises(ConfigError, match="seq_len must be an integer"):
        plans.from_dict({"seq_len": "long"})
    with pytest.raises(ConfigError, match="calibration: unknown option.*size"):
        plans.from_dict({"calibration": {"size": 3}})
    bad = tmp_path / "plan.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        plans.load(bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        plans.load(evil)


def test_plan_file_with_method_options(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: text-classification\nmethods:\n  - name: ort-static\n    options: {per_channel: false}\n"
                    "batch_sizes: [4]\neval: {accuracy: dev.tsv}\n")
    plan = plans.load(path)
    assert plan.methods[0].options == {"per_channel": False} and plan.batch_sizes == (4,)
    assert plan.eval == {"accuracy": "dev.tsv"}


def test_one_method_several_times_with_labels(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("methods:\n  - {name: outlier, label: outlier-5, options: {threshold: 5}}\n"
                    "  - {name: outlier, label: outlier-8, options: {threshold: 8}}\n")
    plan = plans.load(path)
    assert [m.variant for m in plan.methods] == ["outlier-5", "outlier-8"]
    assert plans.from_dict(plan.to_dict()) == plan  # labels survive the plan file round trip
    path.write_text("methods: [outlier, {name: outlier, options: {threshold: 8}}]\n")
    with pytest.raises(ConfigError, match="outlier more than once; give each a distinct label"):
        plans.load(path)
    path.write_text("methods: [{name: outlier, label: ../evil}]\n")
    with pytest.raises(ConfigError, match="label '../evil' must be letters"):
        plans.load(path)


def test_every_run_flag_is_a_plan_key():
    from qdeploy.cli import build_parser

    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    flags = {a.dest for a in run._actions if a.dest not in ("help", "plan", "option", "resume")}
    keys = set(plans.Plan.__dataclass_fields__) | {"calibration_samples"}
    assert flags <= keys, flags - keys


def test_safe_join_refuses_escapes(tmp_path):
    assert safe_join(tmp_path, "a/b.onnx") == (tmp_path / "a" / "b.onnx").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(InputError):
            safe_join(tmp_path, bad)


def test_manifest_with_escaping_path_is_refused(tmp_path):
    manifest = Manifest(format="onnx", model_file="../../etc/passwd", precision="fp32", task="x", source={})
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    with pytest.raises(InputError, match="escapes the artifact directory"):
        Artifact.load(tmp_path)


def test_staging_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "artifact"
    with pytest.raises(RuntimeError):
        with staging(target) as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with staging(target) as tmp:
        (tmp / "model.xml").write_bytes(b"whole")
        finalize(tmp, Manifest(format="openvino", model_file="model.xml", precision="fp32", task="x", source={}))
    loaded = Artifact.load(target, verify=True)
    written = json.loads((target / "manifest.json").read_text())
    assert loaded.manifest.files == {"model.xml": written["files"]["model.xml"]}
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o700)
    with pytest.raises(InputError, match="already exists"):
        with staging(target):
            pass
    (target / "model.xml").write_bytes(b"tampered")
    with pytest.raises(InputError, match="does not match its sha256"):
        Artifact.load(target, verify=True)


def test_calibration_is_seeded_and_bounded(tmp_path):
    data = tmp_path / "big.txt"
    data.write_text("\n".join(f"sentence number {i}" for i in range(5000)))
    a = CalibrationSource(str(data), samples=10, seed=1).texts()
    assert a == CalibrationSource(str(data), samples=10, seed=1).texts()
    assert a != CalibrationSource(str(data), samples=10, seed=2).texts()
    assert len(a) == 10
    tsv = tmp_path / "d.tsv"
    tsv.write_text("sentence\tlabel\nhello there\t1\n")
    assert CalibrationSource(f"{tsv}:sentence").texts() == ["hello there"]
    with pytest.raises(InputError, match="no column 'text'"):
        CalibrationSource(f"{tsv}:text").texts()
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        CalibrationSource(str(latin)).texts()
    with pytest.raises(ConfigError):
        CalibrationSource(samples=0)


def test_machine_description():
    info = machine.describe()
    assert set(info["isa"]) == {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx"}
    assert info["cores_logical"] >= 1 and info["memory_gb"] > 0
    assert "onnxruntime" in info["libraries"] and "CPUExecutionProvider" in info["execution_providers"]


def test_isa_probe_caps_only_when_amx_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    model, flags = machine._cpuinfo()
    monkeypatch.setattr(machine, "_cpuinfo", lambda: (model, flags | {"amx_tile"}))
    monkeypatch.setattr(machine, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert machine.apply_isa_workaround() == machine.ISA_CAP
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == machine.ISA_CAP
    cache = json.loads((tmp_path / "qdeploy" / "isa-probe.json").read_text())
    assert list(cache.values()) == [True]
    os.environ.pop("ONEDNN_MAX_CPU_ISA")  # not monkeypatch: it would restore the cap for later tests
    monkeypatch.setattr(machine, "_PROBE", "raise SystemExit(0)")
    monkeypatch.setattr(machine, "_cpuinfo", lambda: (model + " other", flags | {"amx_tile"}))
    assert machine.apply_isa_workaround() is None
    assert "ONEDNN_MAX_CPU_ISA" not in os.environ
