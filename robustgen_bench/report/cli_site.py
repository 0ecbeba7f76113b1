"""``rgbench leaderboard`` and ``rgbench site``: thin wrappers over report.leaderboard / report.site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def leaderboard_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (one board each).")],
    out: Annotated[Path, typer.Option(help="Folder of the boards.")] = Path("leaderboards"),
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Publish a run with unfinished cells (marked in the board).")] = False,
) -> None:
    """Write each run's board: <out>/<suite>.md and .tex (tables, caption, distances, plots, provenance)."""
    from robustgen_bench.report.leaderboard import write_leaderboard

    for d in run_dirs:
        for p in write_leaderboard(d, out, allow_incomplete=allow_incomplete):
            console.print(f"wrote {p}", highlight=False)


def site_command(
    sources: Annotated[list[Path], typer.Argument(help="Run directories, boards (<suite>.md written by `rgbench leaderboard`) or folders of boards.")],
    out: Annotated[Path, typer.Option(help="Folder of the static site (index.html).")] = Path("site"),
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Include runs with unfinished cells.")] = False,
) -> None:
    """Write a static leaderboard site (opens from disk): boards, sortable tables, plots, model pages."""
    from robustgen_bench.report.site import write_site

    files = write_site(list(sources), out, allow_incomplete=allow_incomplete)
    console.print(f"wrote {len(files)} files; open {out / 'index.html'}", highlight=False)
