"""Embedded SQLite results store (one database per run directory) and the run manifest.

Schema (one row per (cell, sample)); a cell is keyed by the sha256 of its canonical config, so
re-running skips stored work and a changed config never mixes with old rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

DB_NAME = "results.sqlite"
MANIFEST_NAME = "manifest.json"

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_key     TEXT PRIMARY KEY,
    model        TEXT NOT NULL,
    attack       TEXT NOT NULL,
    threat       TEXT NOT NULL,
    epsilon      REAL NOT NULL,
    minimal_norm INTEGER NOT NULL,
    config_json  TEXT NOT NULL,
    indices_hash TEXT NOT NULL,
    created_at   REAL NOT NULL,
    seconds      REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS results (
    cell_key     TEXT NOT NULL REFERENCES cells(cell_key),
    model        TEXT NOT NULL,
    attack       TEXT NOT NULL,
    threat       TEXT NOT NULL,
    epsilon      REAL NOT NULL,
    sample_index INTEGER NOT NULL,
    label        INTEGER NOT NULL,
    clean_pred   INTEGER NOT NULL,
    adv_pred     INTEGER NOT NULL,
    adv_correct  INTEGER NOT NULL,
    distance     REAL,
    violation    TEXT,
    draws_json   TEXT NOT NULL,
    PRIMARY KEY (cell_key, sample_index)
);
CREATE TABLE IF NOT EXISTS cell_counters (
    cell_key         TEXT NOT NULL REFERENCES cells(cell_key),
    batch            TEXT NOT NULL,
    flagged_rejected INTEGER NOT NULL,
    unperturbed      INTEGER NOT NULL,
    PRIMARY KEY (cell_key, batch)
);
CREATE TABLE IF NOT EXISTS checks (
    check_key   TEXT PRIMARY KEY,
    model       TEXT NOT NULL,
    threat      TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    figure      TEXT NOT NULL,
    detail_json TEXT NOT NULL,
    cells_json  TEXT NOT NULL,
    computed_at REAL NOT NULL
);
"""

#: Columns of :func:`read_results`, in order.
RESULT_COLUMNS = [
    "model", "attack", "threat", "epsilon", "sample_index", "label", "clean_pred", "adv_pred",
    "adv_correct", "distance", "minimal_norm", "violation", "cell_key",
]
#: The export CSV columns (issue contract), in order.
EXPORT_COLUMNS = [
    "model", "attack", "threat", "epsilon", "sample_index", "label", "clean_pred", "adv_pred",
    "adv_correct", "distance",
]


@dataclass(frozen=True)
class ResultRow:
    """One sample's outcome in one cell.

    ``distance`` is the norm of the adversarial perturbation that was found (None when none was);
    ``draws`` are the defense's predictions on the adversarial input, one per verification draw.
    """

    sample_index: int
    label: int
    clean_pred: int
    adv_pred: int
    adv_correct: bool
    distance: float | None
    draws: tuple[int, ...]
    violation: str | None = None


@dataclass(frozen=True)
class CellInfo:
    cell_key: str
    model: str
    attack: str
    threat: str
    epsilon: float
    minimal_norm: bool
    config: dict[str, Any]
    indices_hash: str


class ResultStore:
    """SQLite store at ``run_dir/results.sqlite``. Writes are committed per batch."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / DB_NAME
        self.conn = sqlite3.connect(self.path, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # a committed batch survives SIGKILL
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_cell(self, cell: CellInfo) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO cells (cell_key, model, attack, threat, epsilon, minimal_norm,"
                " config_json, indices_hash, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (cell.cell_key, cell.model, cell.attack, cell.threat, float(cell.epsilon),
                 int(cell.minimal_norm), json.dumps(cell.config, sort_keys=True),
                 cell.indices_hash, time.time()),
            )

    def done_indices(self, cell_key: str) -> set[int]:
        cur = self.conn.execute("SELECT sample_index FROM results WHERE cell_key = ?", (cell_key,))
        return {int(r[0]) for r in cur}

    def add_results(self, cell: CellInfo, rows: Sequence[ResultRow], seconds: float = 0.0,
                    counters: dict[str, int] | None = None) -> int:
        """Insert one batch atomically; a sample already stored is never duplicated.

        ``counters`` (the attack's silent-failure counters for this batch) are stored once per
        (cell, batch of sample indices). Returns how many rows were new (a resumed batch may
        hold samples stored before).
        """
        before = self.conn.total_changes
        with self.conn:
            self.conn.executemany(
                "INSERT OR IGNORE INTO results (cell_key, model, attack, threat, epsilon, sample_index,"
                " label, clean_pred, adv_pred, adv_correct, distance, violation, draws_json)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(cell.cell_key, cell.model, cell.attack, cell.threat, float(cell.epsilon),
                  int(r.sample_index), int(r.label), int(r.clean_pred), int(r.adv_pred),
                  int(bool(r.adv_correct)), None if r.distance is None else float(r.distance),
                  r.violation, json.dumps(list(map(int, r.draws)))) for r in rows],
            )
            added = self.conn.total_changes - before
            if counters is not None and rows:
                batch = ",".join(str(int(r.sample_index)) for r in rows)
                self.conn.execute(
                    "INSERT OR IGNORE INTO cell_counters (cell_key, batch, flagged_rejected,"
                    " unperturbed) VALUES (?,?,?,?)",
                    (cell.cell_key, batch, int(counters.get("flagged_rejected", 0)),
                     int(counters.get("unperturbed", 0))))
            self.conn.execute("UPDATE cells SET seconds = seconds + ? WHERE cell_key = ?",
                              (float(seconds), cell.cell_key))
        return added

    def row_count(self) -> int:
        """How many per-sample rows the store holds (all cells)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def cell_seconds(self) -> dict[str, float]:
        return {k: float(s) for k, s in self.conn.execute("SELECT cell_key, seconds FROM cells")}


def read_results(run_dir: str | Path, cell_keys: Iterable[str] | None = None) -> pd.DataFrame:
    """All per-sample rows of a run as a DataFrame with :data:`RESULT_COLUMNS`.

    Types: epsilon/distance float (distance NaN where no adversarial was found), adv_correct bool,
    minimal_norm bool, the rest int or str. Read-only: stats and reports use only this.
    """
    path = Path(run_dir) / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        df = pd.read_sql_query(
            "SELECT r.model, r.attack, r.threat, r.epsilon, r.sample_index, r.label, r.clean_pred,"
            " r.adv_pred, r.adv_correct, r.distance, c.minimal_norm, r.violation, r.cell_key"
            " FROM results r JOIN cells c USING (cell_key)"
            " ORDER BY r.model, r.attack, r.epsilon, r.sample_index", conn)
    finally:
        conn.close()
    if cell_keys is not None:
        df = df[df.cell_key.isin(set(cell_keys))]
    df["adv_correct"] = df["adv_correct"].astype(bool)
    df["minimal_norm"] = df["minimal_norm"].astype(bool)
    df["distance"] = df["distance"].astype(float)
    return df.reset_index(drop=True)


def read_run_results(run_dir: str | Path, manifest: dict[str, Any] | None = None) -> pd.DataFrame:
    """:func:`read_results` restricted to the run as last run: the cells and samples its
    manifest lists. A changed config (retrained weights, another model list) leaves the old
    cells in the store, and ``rgbench run … --limit K`` may follow a longer run of the same
    cells; neither belongs to the run's tables or exports. ``manifest``: the run's, if already
    read."""
    if manifest is None:
        manifest = read_manifest(run_dir)
    keys = [c["key"] for c in manifest.get("cells", []) if "key" in c] or None
    df = read_results(run_dir, cell_keys=keys)
    indices = (manifest.get("dataset") or {}).get("indices")
    if indices:
        df = df[df.sample_index.isin({int(i) for i in indices})].reset_index(drop=True)
    return df


def read_cell_progress(run_dir: str | Path) -> dict[str, tuple[int, float]]:
    """Per cell key: (stored samples, compute seconds). Read-only: safe while a run is writing."""
    path = Path(run_dir) / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        # Counted in SQL so that a status check does not load every result row.
        cur = conn.execute("SELECT c.cell_key, COUNT(r.sample_index), c.seconds FROM cells c"
                           " LEFT JOIN results r USING (cell_key) GROUP BY c.cell_key")
        return {k: (int(n), float(s)) for k, n, s in cur}
    finally:
        conn.close()


def _read_only(run_dir: str | Path) -> sqlite3.Connection:
    path = Path(run_dir) / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (name,)).fetchone() is not None


def read_cell_counters(run_dir: str | Path) -> dict[str, dict[str, int]]:
    """Per cell key: summed silent-failure counters (``flagged_rejected``, ``unperturbed``,
    ``batches``); cells of runs that predate the counters are absent."""
    conn = _read_only(run_dir)
    try:
        if not _has_table(conn, "cell_counters"):
            return {}
        cur = conn.execute("SELECT cell_key, SUM(flagged_rejected), SUM(unperturbed), COUNT(*)"
                           " FROM cell_counters GROUP BY cell_key")
        return {k: {"flagged_rejected": int(f), "unperturbed": int(u), "batches": int(b)}
                for k, f, u, b in cur}
    finally:
        conn.close()


def read_draws(run_dir: str | Path, cell_keys: Iterable[str]) -> pd.DataFrame:
    """The verification draws of ``cell_keys``: columns cell_key, sample_index, draws (tuple)."""
    conn = _read_only(run_dir)
    keys = list(cell_keys)
    try:
        df = pd.read_sql_query(
            "SELECT cell_key, sample_index, draws_json FROM results WHERE cell_key IN ("
            + ",".join("?" * len(keys)) + ")", conn, params=keys) if keys else pd.DataFrame(
            columns=["cell_key", "sample_index", "draws_json"])
    finally:
        conn.close()
    df["draws"] = [tuple(json.loads(t)) for t in df.pop("draws_json")]
    return df


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    p = Path(run_dir) / MANIFEST_NAME
    p.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return p


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / MANIFEST_NAME
    return json.loads(p.read_text()) if p.is_file() else {}
