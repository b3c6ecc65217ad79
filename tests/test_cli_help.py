"""The CLI explains itself: every flag has help, every subcommand a description and examples, the examples parse and
(marked slow) run as printed, and the README's commands section is the parser's."""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

import pytest

from qdeploy.cli import build_parser
from qdeploy.cli_docs import _subparsers, commands_block, section
from qdeploy.cli_parsers import EXAMPLES
from qdeploy.cli_run import EPILOG_RUN, _plan_from_args

from .conftest import ROOT, SHARED


def _examples(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip().startswith("qdeploy ")]


ALL_EXAMPLES = [e for text in (EPILOG_RUN, *EXAMPLES.values()) for e in _examples(text)]


def test_every_flag_has_help_and_every_subcommand_a_description_and_examples():
    subs = _subparsers(build_parser())
    assert set(subs) == {"run", "export", "quantize", "bench", "package", "compare", "inspect", "list"}
    for name, sub in subs.items():
        assert sub.description, name
        assert "examples:" in (sub.epilog or "") and _examples(sub.epilog), name
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_readme_commands_section_is_the_parser():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert section(readme) == commands_block(), "README drifted from the parser: python -m qdeploy.cli_docs README.md"


@pytest.mark.parametrize("example", ALL_EXAMPLES)
def test_example_parses_and_names_files_that_exist(example, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples are written for the project's root, with ../shared beside it
    args = build_parser().parse_args(shlex.split(example)[1:])
    for path in re.findall(r"\.\./shared/\S+|examples/\S+", example):
        relative = path.split("=", 1)[-1].split(":", 1)[0]
        assert (ROOT / relative).exists(), relative
    if args.command == "run" and not args.resume:
        from qdeploy import pipeline

        pipeline.check(_plan_from_args(args))  # the whole plan is valid: model, methods, runtimes, eval files


@pytest.mark.slow
def test_examples_run_as_printed_one_after_another(tmp_path):
    """export makes what quantize, bench, inspect and package use; stdout carries only the result path, and NNCF's
    progress bars (drawn inside qdeploy's) never reach it."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    for command in ("export", "quantize", "bench", "inspect", "package", "list"):
        for example in _examples(EXAMPLES[command]):
            if "runs/" in example:  # needs a finished run: covered by test_package and test_compare
                continue
            done = subprocess.run([sys.executable, "-m", "qdeploy", *shlex.split(example)[1:]], cwd=work,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, (example, done.stderr[-2000:])
            if command in ("export", "quantize", "package"):
                out = shlex.split(example)[shlex.split(example).index("--out") + 1]
                assert done.stdout.strip() == out, (example, done.stdout[-500:])
                assert (work / out).exists()
