"""Rich progress bars for the CLI: one bar per stage, log lines above them."""
from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgress:
    def __init__(self, console):
        self._progress = Progress(TextColumn("[bold]{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[note]}"), console=console,
                                  transient=False)
        self._task = None

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        from .errors import QdeployError

        if exc_type is not None and issubclass(exc_type, QdeployError):
            # A user error is one line: the bars drawn so far go with the display instead of staying above it.
            self._progress.live.transient = True
        self._progress.stop()

    def stage(self, name: str, total: int) -> None:
        self._task = self._progress.add_task(name, total=max(total, 0), note="")

    def advance(self, message: str = "") -> None:
        if self._task is not None:
            self._progress.update(self._task, advance=1, note=message)

    def log(self, message: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, note=message)
        else:
            self._progress.console.log(message)
