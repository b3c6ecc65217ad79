"""Deployment packages: self-contained, verified on load, and usable with only qdeploy and one runtime."""
import json
import subprocess
import tarfile
import venv

import numpy as np
import pytest

import qdeploy
from qdeploy.errors import InputError
from qdeploy.package import package

from .conftest import ROOT


@pytest.fixture(scope="module")
def packaged(sst2_onnx, tmp_path_factory):
    return package(sst2_onnx.directory, tmp_path_factory.mktemp("pkg") / "sst2-onnx")


def test_package_predicts_and_documents(packaged, sst2_onnx):
    manifest = json.loads((packaged / "manifest.json").read_text())
    assert "README.md" in manifest["files"] and manifest["package"]["qdeploy_version"] == qdeploy.__version__
    assert manifest["built_on"]["isa"] and manifest["source"]["sha256"]
    assert "qdeploy.load" in (packaged / "README.md").read_text()
    predict = qdeploy.load(packaged)
    out = predict(["a gorgeous, witty, seductive movie.", "the worst film i have seen in years, dull and ugly."])
    assert [o["label"] for o in out] == ["positive", "negative"] or [o["label"] for o in out] == ["LABEL_1", "LABEL_0"]
    assert all(0.5 < o["score"] <= 1.0 for o in out)


def test_tampered_package_refuses_to_load(packaged, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(packaged, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(InputError, match="model.onnx does not match its sha256"):
        qdeploy.load(copy)


def test_archive_round_trip(sst2_onnx, tmp_path):
    archive = package(sst2_onnx.directory, tmp_path / "sst2.tar.gz")
    assert tarfile.is_tarfile(archive) and not (tmp_path / "sst2").exists()
    labels = qdeploy.load(archive)("a delight from start to finish.")
    assert labels["score"] > 0.5


def test_embeddings_predictor_matches_the_runtime(tmp_path):
    from qdeploy import exporters, models

    artifact = exporters.export(models.resolve(None), "feature-extraction", "onnx", tmp_path / "emb")
    predict = qdeploy.load(package(artifact.directory, tmp_path / "emb-pkg"))
    vectors = predict(["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell sharply."])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.8 > vectors[0] @ vectors[2]


@pytest.mark.slow
def test_package_loads_in_a_venv_with_only_onnxruntime(packaged, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", f"{ROOT}[onnxruntime]"], check=True, timeout=900)
    script = ("import importlib.util, qdeploy; assert importlib.util.find_spec('torch') is None; "
              "assert importlib.util.find_spec('transformers') is None; "
              f"print(qdeploy.load({str(packaged)!r})('a gorgeous, witty, seductive movie.')['label'])")
    proc = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in ("positive", "LABEL_1")
