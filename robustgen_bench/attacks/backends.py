"""The attack libraries behind the adapters: their import names and the command installing each.

A suite is checked against these before any work (:func:`missing_library`), so a library that is
not installed is bad input (exit 2) naming the install command, not a crash after other cells ran.
The version pins come from this package's own metadata (``pyproject.toml``), never from here.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from importlib import metadata

DISTRIBUTION = "robustgen-bench"


@dataclass(frozen=True)
class Backend:
    """``library`` as suites name it; ``module`` its import name; ``distribution`` on PyPI.

    ``extra``: the ``pyproject.toml`` extra declaring it (None for a core dependency);
    ``no_deps``: install it with ``pip install --no-deps`` (its own pins are not needed here).
    """

    library: str
    module: str
    distribution: str
    extra: str | None = None
    no_deps: bool = False


BACKENDS: dict[str, Backend] = {
    "foolbox": Backend("foolbox", "foolbox", "foolbox"),
    "autoattack": Backend("autoattack", "pyautoattack", "pyautoattack"),
    # torchattacks 3.5.1 pins requests~=2.25.1, which it never imports (only the stale robustbench
    # copy its wheel ships does): installed without its dependencies (docs/DEPENDENCIES.md).
    "torchattacks": Backend("torchattacks", "torchattacks", "torchattacks", extra="torchattacks",
                            no_deps=True),
}


def requirement(backend: Backend) -> str:
    """The pinned requirement (``torchattacks==3.5.1``) declared by this package, else the name."""
    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        declared = []
    for req in declared:
        spec, _, marker = req.partition(";")
        name = re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0]
        if name.lower() != backend.distribution.lower():
            continue
        if backend.extra is None or re.search(rf"extra\s*==\s*['\"]{re.escape(backend.extra)}['\"]",
                                               marker):
            return spec.strip().replace(" ", "")
    return backend.distribution


def install_command(backend: Backend) -> str:
    """The shell command that installs ``backend`` into the running environment."""
    flags = " --no-deps" if backend.no_deps else ""
    return f"pip install{flags} '{requirement(backend)}'"


def missing_library(library: str) -> str | None:
    """None when ``library``'s module can be imported; otherwise a message with the install command.

    Uses ``importlib.util.find_spec`` (nothing is imported, so checking a suite stays fast).
    """
    backend = BACKENDS.get(library)
    if backend is None or importlib.util.find_spec(backend.module) is not None:
        return None
    return (f"attack library {library!r} is not installed (no module {backend.module!r}); "
            f"install it with: {install_command(backend)}")


__all__ = ["BACKENDS", "Backend", "install_command", "missing_library", "requirement"]
