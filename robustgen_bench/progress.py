"""Rich progress bars: one per cell, with samples/s and ETA.

On a terminal the bars redraw in place. When the output is not a terminal (a batch job writing a
log file, CI), rich would only print the bars once at the end, so each task prints a plain line
per advance instead: the log of a long run shows how far it got.
"""

from __future__ import annotations

import time
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
        self._console = console or Console()
        self._lines = not self._console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=False,
        )

    def __enter__(self) -> RichProgress:
        if not self._lines:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._lines:
            self._progress.__exit__(*exc)

    def task(self, label: str, total: int, done: int) -> _Task | _LineTask:
        if self._lines:
            return _LineTask(self._console, label, total, done)
        t = self._progress.add_task(label, total=total, completed=done, rate="")
        return _RateTask(self._progress, t)


class _LineTask:
    """A task that prints ``label: done/total (rate, elapsed)`` on every advance (logs, CI)."""

    def __init__(self, console: Console, label: str, total: int, done: int) -> None:
        self._c, self._label, self._total, self._done = console, label, total, done
        self._start, self._first = time.perf_counter(), done
        self._c.print(f"{label}: {done}/{total}" + (" (resumed)" if done else ""), highlight=False)

    def advance(self, n: int) -> None:
        self._done += n
        secs = time.perf_counter() - self._start
        rate = (self._done - self._first) / secs if secs > 0 else 0.0
        self._c.print(f"{self._label}: {self._done}/{self._total} ({rate:.2f} samples/s, "
                      f"{secs:.0f} s)", highlight=False)

    def close(self) -> None:
        pass


class _RateTask(_Task):
    def advance(self, n: int) -> None:
        super().advance(n)
        task = self._p.tasks[self._t]
        speed = task.speed
        self._p.update(self._t, rate=f"{speed:.2f} samples/s" if speed else "")
