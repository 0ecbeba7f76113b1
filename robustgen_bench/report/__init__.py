"""Reports from stored results: tables (pandas), renderers, plots. Never runs an attack.

The names below are imported on first use, so that ``rgbench`` starts without pandas and scipy
(a usage error or ``--help`` answers at once).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["render_table", "summary_table", "write_reports"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("robustgen_bench.report.outputs"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
