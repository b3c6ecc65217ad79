"""Shared fixtures: the real models in ../shared and artifacts exported once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QDEPLOY_SHARED", ROOT.parent / "shared"))
SST2_MODEL = SHARED / "models" / "minilm-l6-sst2"
STORIES = SHARED / "models" / "stories260k"
SST2_DEV = SHARED / "data" / "sst2" / "dev.tsv"
STSB_TEST = SHARED / "data" / "stsb" / "sts-test.tsv"


def pytest_configure(config):
    if not SST2_MODEL.is_dir():
        raise pytest.UsageError(f"the real test models are missing: expected {SHARED} beside the repository "
                                "(or set QDEPLOY_SHARED)")


@pytest.fixture(scope="session")
def sst2_source():
    from qdeploy import models

    return models.resolve(str(SST2_MODEL))


@pytest.fixture(scope="session")
def sst2_onnx(sst2_source, tmp_path_factory):
    from qdeploy import exporters

    return exporters.export(sst2_source, "text-classification", "onnx", tmp_path_factory.mktemp("exp") / "onnx")


@pytest.fixture(scope="session")
def sst2_openvino(sst2_source, tmp_path_factory):
    from qdeploy import exporters

    return exporters.export(sst2_source, "text-classification", "openvino",
                            tmp_path_factory.mktemp("exp") / "openvino")
