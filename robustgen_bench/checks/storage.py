"""Check results stored with the run: the ``checks`` table of ``results.sqlite``.

A result is keyed by the sha256 of (check, model, threat, the cell keys it used, the checks
settings, the evaluated sample set), so ``rgbench checks`` recomputes only what a run is still
missing, and a changed suite or a grown run never shows a stale verdict.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robustgen_bench.checks.result import CheckResult
from robustgen_bench.store import DB_NAME, ResultStore


def check_key(name: str, model: str, threat: str, cells: Sequence[str],
              settings: Mapping[str, Any], samples: str) -> str:
    canon = {"name": name, "model": model, "threat": threat, "cells": sorted(cells),
             "settings": dict(settings), "samples": samples}
    return hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()


def write_check(run_dir: str | Path, key: str, result: CheckResult) -> None:
    """Store one result (replacing an earlier one under the same key), committed at once."""
    with ResultStore(run_dir) as store, store.conn:
        store.conn.execute(
            "INSERT OR REPLACE INTO checks (check_key, model, threat, name, status, figure,"
            " detail_json, cells_json, computed_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (key, result.model, result.threat, result.name, result.status, result.figure,
             json.dumps(result.detail, default=_jsonable), json.dumps(list(result.cells)),
             time.time()))


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def read_checks(run_dir: str | Path, keys: Iterable[str] | None = None,
                cells: Iterable[str] | None = None) -> dict[str, CheckResult]:
    """Stored results by check key; only ``keys`` when given; only results whose cells all
    belong to ``cells`` when given. Read-only; {} for a run without a checks table."""
    path = Path(run_dir) / DB_NAME
    if not path.is_file():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='checks'"
                        ).fetchone() is None:
            return {}
        rows = conn.execute("SELECT check_key, model, threat, name, status, figure, detail_json,"
                            " cells_json FROM checks ORDER BY computed_at").fetchall()
    finally:
        conn.close()
    want = None if keys is None else set(keys)
    allowed = None if cells is None else set(cells)
    out: dict[str, CheckResult] = {}
    for key, model, threat, name, status, figure, detail, cell_json in rows:
        used = tuple(json.loads(cell_json))
        if want is not None and key not in want:
            continue
        if allowed is not None and not set(used) <= allowed:
            continue
        out[key] = CheckResult(name, model, threat, status, figure, json.loads(detail), used)
    return out


def current_checks(run_dir: str | Path, manifest: Mapping[str, Any]) -> list[CheckResult]:
    """The latest stored result per (model, threat, check) among those computed on the run's
    current cells (for tables and boards: never recomputes)."""
    cells = [c["key"] for c in manifest.get("cells", []) if "key" in c]
    latest: dict[tuple[str, str, str], CheckResult] = {}
    for r in read_checks(run_dir, cells=cells or None).values():
        latest[(r.model, r.threat, r.name)] = r
    return list(latest.values())


def checks_of_runs(run_dirs: Sequence[str | Path], manifests: Sequence[Mapping[str, Any]],
                   models: Sequence[str] | None = None) -> list[CheckResult]:
    """The stored current results of several runs (a later run's result replaces an earlier
    one for the same model, threat and check), restricted to ``models``."""
    latest: dict[tuple[str, str, str], CheckResult] = {}
    for d, man in zip(run_dirs, manifests):
        for r in current_checks(d, man):
            if models is None or r.model in models:
                latest[(r.model, r.threat, r.name)] = r
    return list(latest.values())
