"""ruff over the code, with the project's own settings (pyproject.toml: line length 120, pycodestyle and pyflakes):
what review would otherwise catch by hand. Pure: needs nothing of ../shared."""
from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_ruff_finds_nothing():
    command = [sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks", "--output-format", "concise"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-1000:]
