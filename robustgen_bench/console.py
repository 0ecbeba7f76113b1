"""Rich consoles for the command line: never hard-wrap a message, never cut an identifier.

On a terminal, rich lays tables out at the terminal's width and the terminal wraps long text
lines itself (``soft_wrap``: rich inserts no line breaks into messages, so a path in an error
stays whole). When the output is not a terminal (a pipe, a log file, CI), rich would fall back
to 80 columns, or to ``COLUMNS``: these consoles use :data:`PIPE_WIDTH` instead, so a script
reading the output sees whole lines and tables at their natural width.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

#: Width of a console whose output is not a terminal (wider than any table this tool prints).
PIPE_WIDTH = 1000


def make_console(*, stderr: bool = False) -> Console:
    """A console for stdout (or stderr): terminal width on a terminal, :data:`PIPE_WIDTH` otherwise."""
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal:
        console = Console(stderr=stderr, soft_wrap=True, width=PIPE_WIDTH)
    return console


def add_id_column(table: Table, header: str, ids: list[str], **kwargs: Any) -> None:
    """Append a column for identifiers (model ids, attack ids, cell keys) that is never truncated.

    ``no_wrap`` keeps an id on one line and ``min_width`` reserves room for the longest, so rich
    narrows the other columns first; should a terminal be narrower than the id itself, the id is
    folded onto the next line (``overflow="fold"``), never cut or ellipsised.
    """
    width = max([len(header)] + [len(i) for i in ids])
    table.add_column(header, no_wrap=True, overflow="fold", min_width=width, **kwargs)


__all__ = ["PIPE_WIDTH", "add_id_column", "make_console"]
