"""Rich progress bars: one per cell, with samples/s and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class _Task:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._p = progress
        self._t = task

    def advance(self, n: int) -> None:
        self._p.advance(self._t, n)

    def close(self) -> None:
        self._p.stop_task(self._t)


class RichProgress:
    """Context manager; ``task(label, total, done)`` starts one bar for one cell."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=False,
        )

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def task(self, label: str, total: int, done: int) -> _Task:
        t = self._progress.add_task(label, total=total, completed=done, rate="")
        return _RateTask(self._progress, t)


class _RateTask(_Task):
    def advance(self, n: int) -> None:
        super().advance(n)
        task = self._p.tasks[self._t]
        speed = task.speed
        self._p.update(self._t, rate=f"{speed:.2f} samples/s" if speed else "")
