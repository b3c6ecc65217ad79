"""The task comes from the model's own config.json unless asked; a head is never dropped silently."""
from __future__ import annotations

import json
import time

import pytest

from qdeploy.errors import UnsupportedError
from qdeploy.tasks import infer_task, resolve_task

from .conftest import SST2_MODEL, STORIES
from .test_cli import qdeploy


@pytest.mark.parametrize("config, task", [
    ({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}, "text-classification"),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "text-generation"),
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "text-generation"),
    ({"architectures": ["BartForConditionalGeneration"], "model_type": "bart", "is_encoder_decoder": True},
     "text2text-generation"),
    ({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}, "text2text-generation"),
    ({"architectures": ["BertModel"], "model_type": "bert"}, "feature-extraction"),
    ({"model_type": "bert"}, "feature-extraction"),
])
def test_task_is_inferred_from_the_architecture(config, task):
    assert infer_task(config)[0] == task
    assert resolve_task("auto", config)[0] == task


def test_a_head_is_not_dropped_without_saying_so():
    classifier = {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}
    with pytest.raises(UnsupportedError, match="would drop it.*--drop-head"):
        resolve_task("feature-extraction", classifier)
    assert resolve_task("feature-extraction", classifier, drop_head=True) == ("feature-extraction", "as asked")
    with pytest.raises(UnsupportedError, match="TokenClassification head.*--drop-head"):
        infer_task({"architectures": ["BertForTokenClassification"]})


def test_real_models_resolve_to_their_tasks():
    for model, task in ((SST2_MODEL, "text-classification"), (STORIES, "text-generation")):
        config = json.loads((model / "config.json").read_text())
        assert resolve_task(None, config)[0] == task


def test_cli_export_infers_the_classifier_and_refuses_to_drop_its_head(tmp_path):
    out = tmp_path / "sst2-onnx"
    proc = qdeploy("export", "--model", SST2_MODEL, "--format", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "task text-classification (from BertForSequenceClassification in config.json)" in proc.stdout + proc.stderr
    assert json.loads((out / "manifest.json").read_text())["task"] == "text-classification"
    t0 = time.perf_counter()
    proc = qdeploy("export", "--model", SST2_MODEL, "--task", "feature-extraction", "--format", "onnx",
                   "--out", tmp_path / "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "would drop it" in lines[0] and "--drop-head" in lines[0]
    assert not (tmp_path / "x").exists() and time.perf_counter() - t0 < 60
