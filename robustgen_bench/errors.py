"""Errors a user can act on. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations

from pathlib import Path


class UserInputError(Exception):
    """Bad input from a user file or the command line (exit code 2).

    The message names the file, the key (and line where known) and what was expected.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file or ""
        if self.line is not None and where:
            where += f":{self.line}"
        parts = [p for p in (where, f"key '{self.key}'" if self.key else "") if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.detail}" if prefix else self.detail

    def __reduce__(self) -> tuple:
        # Keep file, key and line when the error crosses a process boundary (worker processes).
        return (_rebuild_user_error, (type(self), self.detail, self.file, self.key, self.line))


def _rebuild_user_error(cls: type[UserInputError], detail: str, file: str | None, key: str | None,
                        line: int | None) -> UserInputError:
    return cls(detail, file=file, key=key, line=line)


class ConfigError(UserInputError):
    """A malformed suite file."""


class ZooError(UserInputError):
    """A malformed or broken zoo entry."""


class RuntimeFailure(Exception):
    """A failure while running (exit code 1), with a message a user can read."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean ...?' suffix from difflib, or the list of choices."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if close:
        return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    if len(choices) <= 20:
        return " Known: " + ", ".join(sorted(choices)) + "."
    return ""
