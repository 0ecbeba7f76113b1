"""``rgbench table``: regenerate a results table from stored runs (never runs an attack)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def table_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (same samples).")],
    format: Annotated[str, typer.Option("--format", "-f", help="md | tex | csv | html | term")] = "md",  # noqa: A002
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,  # noqa: UP007
    limit: Annotated[Optional[int], typer.Option(help="Only the first N samples of the subset (a stopped run: each must be finished in every cell).")] = None,  # noqa: UP007
) -> None:
    """Print (or write) the accuracy table of stored runs, combined, with Wilson intervals."""
    from robustgen_bench.report.outputs import render_table
    from robustgen_bench.report.render import FORMATS, FormatError
    from robustgen_bench.report.runs import RunDirError

    if format not in FORMATS:
        raise FormatError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}",
                          key="--format")
    for d in run_dirs:
        if not Path(d).is_dir():
            raise RunDirError("run directory not found", file=d)
    text = render_table(run_dirs, format, limit=limit)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)
