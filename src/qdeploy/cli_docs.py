"""The README's commands section, written from the parser so that the two cannot drift apart
(tests/test_cli_help.py fails when they do). `python -m qdeploy.cli_docs README.md` rewrites it."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

BEGIN = "<!-- commands: written by `python -m qdeploy.cli_docs README.md` from the parser; do not edit -->"
END = "<!-- /commands -->"
WIDTH = 118


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands_block() -> str:
    from .cli import build_parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)  # argparse wraps usage at the terminal's width: fix it
    try:
        parser = build_parser()
        helps = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
        lines = ["```"]
        for name, sub in _subparsers(parser).items():
            usage = sub.format_usage().removeprefix("usage: ").replace(" [-h]", "").rstrip()
            # argparse indents continuation lines under the text after "usage: "; without that prefix, less so
            usage = "\n".join(line[len("usage: "):] if line.startswith(" ") else line for line in usage.splitlines())
            lines += [f"# {helps.get(name, '')}", usage]
        lines += ["```"]
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before
    return "\n".join([BEGIN, *lines, END])


def section(readme: str) -> str:
    """The README's current commands block (markers included), or '' when it has none."""
    found = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), readme, flags=re.S)
    return found.group(0) if found else ""


def rewrite(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    old = section(text)
    if not old:
        raise SystemExit(f"{path} has no commands block ({BEGIN} ... {END})")
    new = commands_block()
    path.write_text(text.replace(old, new), encoding="utf-8")
    return old != new


if __name__ == "__main__":
    changed = rewrite(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
    print("rewritten" if changed else "unchanged")
