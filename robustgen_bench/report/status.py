"""How far a run has got: stored samples and compute time per cell, the finished prefix, an estimate.

Reads the store and the manifest only (read-only, so it is safe while ``rgbench run`` writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.markup import escape
from rich.table import Table

from robustgen_bench.console import add_id_column
from robustgen_bench.report.runs import finished_prefix, load_runs
from robustgen_bench.store import read_cell_progress


@dataclass(frozen=True)
class RunStatus:
    """``cells``: one row per planned cell (model, attack, epsilon, done, n, seconds).

    ``prefix``: the first ``prefix`` samples of the subset are stored in every cell;
    ``remaining_seconds``: each started cell's seconds per sample times its missing samples
    (None while some cell has no sample yet, since there is nothing to extrapolate from).
    """

    cells: pd.DataFrame
    n: int
    prefix: int
    remaining_seconds: float | None
    limit: int | None = None  # the run was last invoked with --limit (n is that limit)

    @property
    def seconds(self) -> float:
        return float(self.cells.seconds.sum())


def run_status(run_dir: str | Path) -> RunStatus:
    runs = load_runs([run_dir])
    man = runs.manifests[0]
    n = int((man.get("dataset") or {}).get("n", 0))
    # Every stored sample, also beyond a `--limit` run's prefix, so that s/sample is right.
    progress = read_cell_progress(run_dir)
    rows = []
    for c in man.get("cells", []):
        done, seconds = progress.get(c.get("key"), (0, 0.0))
        rows.append({"model": c.get("model"), "attack": c.get("attack"),
                     "epsilon": float(c.get("epsilon", 0.0)), "done": done, "n": n, "seconds": seconds,
                     "cell_key": c.get("key")})
    cells = pd.DataFrame(rows, columns=["model", "attack", "epsilon", "done", "n", "seconds",
                                        "cell_key"])
    limit = (man.get("command_line") or {}).get("limit")
    started = cells.done > 0
    remaining = None
    if started.all():
        remaining = float((cells.seconds / cells.done * (cells.n - cells.done).clip(lower=0)).sum())
    prefix = finished_prefix(runs) if runs.dataset.get("indices") else 0
    return RunStatus(cells=cells, n=n, prefix=prefix, remaining_seconds=remaining, limit=limit)


def _hours(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def status_table(st: RunStatus, title: str = "") -> Table:
    """A rich table: one row per cell with stored/n, compute time and seconds per sample."""
    t = Table(title=escape(title) or None)
    add_id_column(t, "model", [str(m) for m in st.cells.model])
    add_id_column(t, "attack", [str(a) for a in st.cells.attack])
    for col in ("ε", "stored", "compute", "s/sample"):
        t.add_column(col, justify="right")
    for r in st.cells.itertuples():
        mark = "" if r.done >= r.n else " …"
        t.add_row(escape(str(r.model)), escape(str(r.attack)), f"{r.epsilon:g}",
                  f"{r.done}/{r.n}{mark}", _hours(r.seconds),
                  f"{r.seconds / r.done:.1f}" if r.done else "–")
    return t


#: Columns of :func:`status_records` (``rgbench status --format csv``), in order.
STATUS_COLUMNS = ("model", "attack", "epsilon", "stored", "n", "seconds", "seconds_per_sample",
                  "cell_key")


def status_records(st: RunStatus) -> list[dict[str, Any]]:
    """One record per planned cell (:data:`STATUS_COLUMNS`), plain Python values."""
    return [{"model": r.model, "attack": r.attack, "epsilon": float(r.epsilon), "stored": int(r.done),
             "n": int(r.n), "seconds": round(float(r.seconds), 3),
             "seconds_per_sample": round(float(r.seconds) / int(r.done), 3) if r.done else None,
             "cell_key": r.cell_key} for r in st.cells.itertuples()]


def status_payload(st: RunStatus, run_dir: str | Path) -> dict[str, Any]:
    """Everything ``rgbench status`` prints, as one JSON-able mapping (``--format json``)."""
    return {"run_dir": Path(run_dir).as_posix(), "n": st.n, "finished_prefix": st.prefix,
            "complete": st.prefix >= st.n, "limit": st.limit, "seconds": round(st.seconds, 3),
            "remaining_seconds": None if st.remaining_seconds is None else round(st.remaining_seconds, 3),
            "cells": status_records(st)}


def status_lines(st: RunStatus, run_dir: str | Path) -> list[str]:
    """The summary under the table: what can be tabulated now, and what is left."""
    out = [f"compute so far: {_hours(st.seconds)} (sum over cells; one process's wall time each)"]
    if st.limit is not None:
        out.append(f"the run was last invoked with --limit {st.limit}; cells may hold more samples "
                   "of a longer run (the suite without --limit resumes it)")
    if st.prefix >= st.n:
        out.append(f"complete: all {st.n} samples in every cell")
    elif st.prefix:
        out.append(f"finished in every cell: the first {st.prefix} of {st.n} samples → "
                   f"rgbench table {Path(run_dir).as_posix()} --limit {st.prefix}")
    else:
        out.append("no sample is finished in every cell yet")
    if st.prefix < st.n:
        out.append("remaining: " + (f"≈ {_hours(st.remaining_seconds)} of compute at each cell's rate so far"
                                    if st.remaining_seconds is not None
                                    else "unknown until every cell has started"))
    return out


__all__ = ["STATUS_COLUMNS", "RunStatus", "run_status", "status_lines", "status_payload",
           "status_records", "status_table"]
