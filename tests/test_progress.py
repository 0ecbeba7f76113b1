"""Progress output: redrawn bars on a terminal, one plain line per advance in a log."""

from __future__ import annotations

import io

from rich.console import Console

from robustgen_bench.progress import RichProgress


def test_non_terminal_output_gets_a_line_per_advance() -> None:
    buf = io.StringIO()
    with RichProgress(Console(file=buf, force_terminal=False, width=200)) as progress:
        task = progress.task("mnist/abs · pgd-l2", 30, 10)
        task.advance(10)
        task.advance(10)
        task.close()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "mnist/abs · pgd-l2: 10/30 (resumed)"
    assert [ln.split(" (")[0] for ln in lines[1:]] == ["mnist/abs · pgd-l2: 20/30", "mnist/abs · pgd-l2: 30/30"]
    assert all("samples/s" in ln for ln in lines[1:])


def test_terminal_output_is_a_bar_not_lines() -> None:
    buf = io.StringIO()
    with RichProgress(Console(file=buf, force_terminal=True, width=200)) as progress:
        task = progress.task("cell", 4, 0)
        task.advance(4)
        task.close()
    out = buf.getvalue()
    assert "4/4" in out and "cell: 4/4" not in out
