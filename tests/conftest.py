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


_SUITE = __name__.rpartition(".")[0] or "tests"  # this test package: its helpers are followed, libraries are not


def _under_shared(value) -> bool:
    if isinstance(value, (str, Path)):
        try:
            return Path(value).resolve().is_relative_to(SHARED.resolve())
        except (OSError, ValueError):
            return False
    if isinstance(value, (list, tuple)):
        return any(_under_shared(v) for v in value)
    if isinstance(value, dict):
        return any(_under_shared(v) for v in value.values())
    return False


def _code_needs_shared(code, scope: dict, seen: set) -> bool:
    """Whether a function's code reaches ../shared: a global it names holds a path under it, or a function of the
    test suite that it names (or a function nested in it) does, followed through every call by name."""
    if code in seen:
        return False
    seen.add(code)
    imported = _imported_in(code)
    for name in code.co_names:
        value = imported.get(name, scope.get(name))
        if _under_shared(value):
            return True
        function = getattr(value, "__wrapped__", value)
        inner = getattr(function, "__code__", None)
        if inner is not None and str(getattr(function, "__module__", "")).startswith(_SUITE) and \
                _code_needs_shared(inner, function.__globals__, seen):
            return True
    return any(_code_needs_shared(const, scope, seen) for const in code.co_consts if hasattr(const, "co_names"))


def _imported_in(code) -> dict:
    """What a function imports from the suite's own modules in its body (`from .test_architectures import tiny`)."""
    import dis
    import importlib

    found, module = {}, None
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME":
            module = None
            try:
                module = importlib.import_module(f"{_SUITE}.{instruction.argval}")
            except ImportError:
                pass
        elif instruction.opname == "IMPORT_FROM" and module is not None and hasattr(module, instruction.argval):
            found[instruction.argval] = getattr(module, instruction.argval)
    return found


def _needs_shared(item) -> bool:
    """What this one test uses: its own code, its fixtures' code (and theirs, as pytest resolved them), and its
    parameters. Pure tests in a module that also holds tests on real models still run."""
    functions = [item.function]
    info = getattr(item, "_fixtureinfo", None)
    for name in item.fixturenames:
        for fixture in (info.name2fixturedefs.get(name) or ()) if info else ():
            functions.append(fixture.func)
    seen: set = set()
    for function in functions:
        function = getattr(function, "__wrapped__", function)
        code = getattr(function, "__code__", None)
        if code is not None and _code_needs_shared(code, function.__globals__, seen):
            return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return _under_shared(list(params.values()))


def pytest_collection_modifyitems(config, items):
    if SST2_MODEL.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the real models and data of {SHARED} (or set QDEPLOY_SHARED)")
    for item in items:
        if _needs_shared(item):
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
