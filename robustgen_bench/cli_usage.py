"""Usage errors of the command line (unknown option, bad or missing value): exit 2, shown with
the command's usage line and, for an unknown option, a "did you mean".

typer >= 0.2x vendors click, older versions use click itself: the exception classes are taken
from typer's public ``BadParameter`` so that either works without importing click.
"""

from __future__ import annotations

import difflib
from typing import Any

import typer


def _base_named(cls: type, name: str) -> type:
    """The class called ``name`` among ``cls``'s bases."""
    return next(c for c in cls.__mro__ if c.__name__ == name)


#: click's UsageError (NoSuchOption, BadParameter, MissingParameter, ...) and ClickException.
UsageError: type[Exception] = _base_named(typer.BadParameter, "UsageError")
ClickException: type[Exception] = _base_named(typer.BadParameter, "ClickException")

#: Options people reach for that a command spells differently (offered before difflib's guesses).
OPTION_SYNONYMS = {"--out": "--run-dir", "--output": "--run-dir", "--output-dir": "--run-dir",
                   "--out-dir": "--run-dir", "--outdir": "--run-dir", "-o": "--run-dir"}


def add_did_you_mean(e: Exception) -> None:
    """Append "Did you mean --x?" to an unknown-option error: a known synonym, else click's guess
    (difflib over the command's options)."""
    option = getattr(e, "option_name", None)
    ctx = getattr(e, "ctx", None)
    if not option or ctx is None or not hasattr(e, "possibilities"):  # only NoSuchOption
        return
    known = [o for p in ctx.command.params for o in (*p.opts, *p.secondary_opts)
             if o.startswith("--")]
    synonym = OPTION_SYNONYMS.get(option)
    close = ([synonym] if synonym in known
             else list(getattr(e, "possibilities", None) or [])
             or difflib.get_close_matches(option, known, n=3, cutoff=0.6))
    if close:
        e.possibilities = None  # type: ignore[attr-defined]
        e.message = f"{e.message}. Did you mean {' or '.join(close)}?"  # type: ignore[attr-defined]


def context_for(root: Any, argv: list[str], prog_name: str) -> Any:
    """The click context of the (sub)command of ``root`` that ``argv`` names, for errors raised
    without one (e.g. an option missing its value), so they too show that command's usage."""
    ctx = root.make_context(prog_name, [], resilient_parsing=True)
    for token in argv:
        sub = getattr(ctx.command, "commands", {}).get(token)
        if sub is None:
            if token.startswith("-"):
                continue
            break
        ctx = sub.make_context(token, [], parent=ctx, resilient_parsing=True)
    return ctx


def show_usage_error(e: Exception, app: typer.Typer, argv: list[str], prog_name: str) -> None:
    """Print ``e`` as click does (usage line, "Try ... --help", "Error: ..."), on stderr."""
    if getattr(e, "ctx", None) is None:
        try:
            e.ctx = context_for(typer.main.get_command(app), argv, prog_name)  # type: ignore[attr-defined]
            e.cmd = e.ctx.command  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - the message alone is still right
            pass
    add_did_you_mean(e)
    e.show()  # type: ignore[attr-defined]


__all__ = ["ClickException", "OPTION_SYNONYMS", "UsageError", "add_did_you_mean", "context_for",
           "show_usage_error"]
