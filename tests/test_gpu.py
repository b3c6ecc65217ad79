"""GPU execution providers, fp16 and the symmetric int8 form for TensorRT.

The GPU tests skip, with the runtime's own reason, where CUDA or TensorRT is absent; the I/O binding code they rely
on is exercised here on the CPU, and the fp16 and symmetric artifacts are checked on the real SST-2 classifier.
"""
import subprocess
import sys

import numpy as np
import pytest

from qdeploy import quantization, runtimes
from qdeploy.benchmarking import LatencyScenario, benchmark_case, measure_session
from qdeploy.calibration import CalibrationSource
from qdeploy.runtimes.onnxruntime_rt import OrtDeviceSession

from .conftest import ROOT, SHARED, SST2_DEV

CALIBRATION = CalibrationSource(str(SHARED / "data" / "sst2" / "train-sample.tsv"), samples=16)
GPU_RUNTIMES = ["ort-cuda", "ort-tensorrt"]


def _dev_batches(artifact, rows=160, batch=16):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(artifact.directory))
    texts = [line.split("\t")[0] for line in SST2_DEV.read_text(encoding="utf-8").splitlines()[1:rows + 1]]
    names = list(artifact.manifest.inputs)
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start:start + batch], padding=True, truncation=True, max_length=128, return_tensors="np")
        yield {name: enc[name].astype(np.int64) for name in names}


def _logits(artifact, runtime):
    session = runtimes.load(artifact, runtime)
    return np.concatenate([session.run(batch)["logits"] for batch in _dev_batches(artifact)])


@pytest.fixture(scope="module")
def sst2_fp16(sst2_onnx, tmp_path_factory):
    return quantization.quantize(sst2_onnx, quantization.make_config("fp16"), tmp_path_factory.mktemp("fp16") / "a")


@pytest.fixture(scope="module")
def sst2_symmetric(sst2_onnx, tmp_path_factory):
    config = quantization.make_config("ort-static", {"preset": "tensorrt"})
    return quantization.quantize(sst2_onnx, config, tmp_path_factory.mktemp("trt") / "a", CALIBRATION)


@pytest.fixture(scope="module")
def fp32_logits(sst2_onnx):
    return _logits(sst2_onnx, "ort-cpu")


def test_fp16_agrees_with_fp32_on_sst2(sst2_onnx, sst2_fp16, fp32_logits):
    import onnx

    graph = onnx.load(str(sst2_fp16.model_path)).graph
    halves = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) > len(graph.initializer) // 2
    # keep_io_types: the graph's interface is unchanged, so every runtime adapter runs it as it is.
    assert all(v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for v in [*graph.input, *graph.output])
    assert sst2_fp16.precision == "fp16" and sst2_fp16.size_mb() < 0.6 * sst2_onnx.size_mb()
    fp16_logits = _logits(sst2_fp16, "ort-cpu")  # the CPU provider casts ops without fp16 kernels back to fp32
    agreement = float((fp16_logits.argmax(1) == fp32_logits.argmax(1)).mean())
    assert agreement >= 0.99, agreement
    assert np.abs(fp16_logits - fp32_logits).max() < 0.05


def test_tensorrt_preset_is_symmetric_s8s8(sst2_symmetric):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(sst2_symmetric.model_path)).graph
    inits = {i.name: i for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert len(zero_points) > 20  # activations and weights of every quantized MatMul
    assert all(zp.data_type == onnx.TensorProto.INT8 for zp in zero_points)
    assert all(not numpy_helper.to_array(zp).any() for zp in zero_points)
    trt = sst2_symmetric.manifest.runtime_config["onnxruntime"]["provider_options"]["TensorrtExecutionProvider"]
    assert trt == {"trt_int8_enable": True}


def test_default_static_is_not_symmetric_here(sst2_onnx, tmp_path):
    """The check above can fail: without the option, u8 activations get non-zero zero points on this CPU."""
    import onnx
    from onnx import numpy_helper

    from qdeploy.machine import has_vnni

    if has_vnni():
        pytest.skip("with VNNI the default activations are s8; the asymmetric zero points are then not all non-zero")
    artifact = quantization.quantize(sst2_onnx, quantization.make_config("ort-static"), tmp_path / "a", CALIBRATION)
    graph = onnx.load(str(artifact.model_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert any(zp.any() for zp in zero_points)


def test_io_binding_matches_plain_run_on_the_cpu(sst2_onnx):
    """The GPU sessions' binding code, run where it can run here: CPU device, CPU provider."""
    session = OrtDeviceSession(sst2_onnx, [("CPUExecutionProvider", {})], 1, device="cpu")
    batch = next(_dev_batches(sst2_onnx, rows=8, batch=8))
    bound = session.bind(batch)
    bound()
    np.testing.assert_allclose(bound.outputs()["logits"], session.run(batch)["logits"], rtol=1e-5, atol=1e-5)
    from transformers import AutoTokenizer

    case = benchmark_case(AutoTokenizer.from_pretrained(str(sst2_onnx.directory)), session.input_names, 1, 32, 2)
    m = measure_session(session, case.inputs, LatencyScenario(warmup=1, min_reps=3, min_time_s=0))
    assert "resident on the device" in m.what and m.iterations >= 3
    assert session.settings["io_binding"] is True and session.settings["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize("runtime", GPU_RUNTIMES)
def test_gpu_runtime_runs_every_precision(runtime, sst2_onnx, sst2_fp16, sst2_symmetric, fp32_logits):
    reason = runtimes.get(runtime).unavailable_reason()
    if reason:
        pytest.skip(f"{runtime}: {reason}")
    fp32 = _logits(sst2_onnx, runtime)
    np.testing.assert_allclose(fp32, fp32_logits, atol=1e-3)
    for artifact, min_agreement in ((sst2_fp16, 0.99), (sst2_symmetric, 0.95)):
        logits = _logits(artifact, runtime)
        assert float((logits.argmax(1) == fp32_logits.argmax(1)).mean()) >= min_agreement, artifact.name
    session = runtimes.load(sst2_onnx, runtime)
    assert session.settings["io_binding"] is True
    assert session.settings["provider_options"][runtimes.get(runtime).provider]["device_id"] == "0"


def test_gpu_matrix_says_why_it_cannot_run_here():
    usable = [r for r in GPU_RUNTIMES if runtimes.get(r).unavailable_reason() is None]
    if usable:
        pytest.skip(f"{', '.join(usable)} present: the matrix would run for real")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_matrix.py")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "no GPU execution provider here" in result.stderr and "CUDAExecutionProvider" in result.stderr
    assert "Traceback" not in result.stderr
