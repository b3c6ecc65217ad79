"""Shared fixtures: the real models in ../shared and artifacts exported once per test session."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QDEPLOY_SHARED", ROOT.parent / "shared"))
SST2_MODEL = SHARED / "models" / "minilm-l6-sst2"
STORIES = SHARED / "models" / "stories260k"
SST2_DEV = SHARED / "data" / "sst2" / "dev.tsv"
STSB_TEST = SHARED / "data" / "stsb" / "sts-test.tsv"


# A test module that names one of these needs the real models and data of ../shared; the others (parsing, reports,
# registries, the import contract) are pure and run anywhere.
_NEEDS_SHARED = re.compile(r"SHARED|STORIES|SST2|STSB|sst2_|resolve\(None\)|default_parents")


def pytest_collection_modifyitems(config, items):
    if SST2_MODEL.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the real models and data of {SHARED} (or set QDEPLOY_SHARED)")
    needs = {}
    for item in items:
        path = Path(str(item.fspath))
        if path not in needs:
            needs[path] = bool(_NEEDS_SHARED.search(path.read_text(encoding="utf-8")))
        if needs[path]:
            item.add_marker(skip)


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


def pytest_report_header(config):
    if not SST2_MODEL.is_dir():
        return f"qdeploy: {SHARED} is missing: only the pure tests run, every test on real models is skipped"
