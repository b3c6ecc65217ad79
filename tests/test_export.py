import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qdeploy import exporters, models, runtimes
from qdeploy.artifact import Artifact
from qdeploy.errors import ConfigError, ExportValidationError, UnsupportedError

from .conftest import STORIES


def test_onnx_export_is_validated_and_manifest_complete(sst2_onnx):
    manifest = json.loads((sst2_onnx.directory / "manifest.json").read_text())
    for key in ("format", "model_file", "precision", "method", "parent", "source", "runtime_config", "inputs",
                "outputs", "libraries", "files"):
        assert key in manifest
    assert manifest["format"] == "onnx" and manifest["precision"] == "fp32"
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["source"]["sha256"] and len(manifest["source"]["sha256"]) == 64
    assert manifest["validation"]["max_abs_diff"] < 1e-4
    assert "model.onnx" in manifest["files"] and "tokenizer.json" in manifest["files"]
    Artifact.load(sst2_onnx.directory, verify=True)


def test_openvino_export_runs_true_fp32(sst2_openvino):
    assert sst2_openvino.manifest.runtime_config["openvino"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert sst2_openvino.manifest.validation["max_abs_diff"] < 1e-4


def test_dynamic_batch_and_sequence_axes(sst2_onnx):
    session = runtimes.load(sst2_onnx, "ort-cpu")
    for batch, seq in ((1, 7), (5, 64)):
        ids = np.full((batch, seq), 1000, dtype=np.int64)
        out = session.run({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        assert out["logits"].shape == (batch, 2)


def test_perturbed_graph_fails_validation(sst2_onnx, tmp_path):
    target = tmp_path / "perturbed"
    target.mkdir()
    for rel in sst2_onnx.manifest.files:
        (target / rel).write_bytes((sst2_onnx.directory / rel).read_bytes())
    (target / "manifest.json").write_text((sst2_onnx.directory / "manifest.json").read_text())
    model = onnx.load(str(target / "model.onnx"))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if len(t.dims) == 2 else 0)
    array = numpy_helper.to_array(weight).copy()
    array[:, :8] += 0.05  # a small corruption of one weight matrix
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(target / "model.onnx"))
    with pytest.raises(ExportValidationError, match="differs from PyTorch"):
        exporters.validate(Artifact.load(target))
    with pytest.raises(Exception, match="sha256"):
        Artifact.load(target, verify=True)


def test_an_architecture_without_an_entry_is_tried_and_validation_decides(tmp_path):
    from qdeploy.tasks import ARCHITECTURES

    from .test_architectures import tiny

    assert "gptj" not in ARCHITECTURES  # refused before anything was tried, once
    artifact = exporters.export(tiny("gptj", tmp_path / "gptj"), "text-generation", "onnx", tmp_path / "x")
    assert artifact.manifest.validation["greedy_tokens_identical"]
    assert artifact.manifest.inputs[:3] == ["input_ids", "attention_mask", "position_ids"]


def test_task_the_architecture_does_not_do_is_refused(tmp_path):
    """transformers' Auto class for the task decides; its refusal is one line naming the architecture and task."""
    import transformers

    source = models.resolve(str(STORIES))
    with pytest.raises(UnsupportedError) as caught:
        exporters.export(source, "text2text-generation", "onnx", tmp_path / "x")
    assert str(caught.value) == ("architecture 'llama' does not support task text2text-generation: transformers "
                                 f"{transformers.__version__} has no AutoModelForSeq2SeqLM for it")
    assert not (tmp_path / "x").exists()
    unknown = tmp_path / "unknown"
    shutil.copytree(STORIES, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "llama-from-the-future"}))
    with pytest.raises(UnsupportedError, match="^architecture 'llama-from-the-future' is unknown to transformers "):
        exporters.export(models.resolve(str(unknown)), "text-generation", "onnx", tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_unknown_task_and_format(sst2_source, tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'translation'"):
        exporters.export(sst2_source, "translation", "onnx", tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown format 'tflite'; choose from: onnx, openvino"):
        exporters.export(sst2_source, "text-classification", "tflite", tmp_path / "b")
