"""Builds small *real* run directories (SQLite store + manifest) for the stats/report tests.

``write_run`` goes through :class:`robustgen_bench.store.ResultStore`, so every test that uses it
also exercises the read path (``read_results``/``read_manifest``) the reports rely on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustgen_bench.store import CellInfo, ResultRow, ResultStore, read_results, write_manifest

N_CLASSES = 10


@dataclass
class Cell:
    """One (model, attack, ε) cell: per-sample correctness (and distances for minimal-norm)."""

    model: str
    attack: str
    threat: str
    epsilon: float
    correct: Sequence[bool]
    distance: Sequence[float | None] | None = None
    minimal_norm: bool = False
    samples: Sequence[int] | None = None


@dataclass
class Run:
    models: dict[str, str]  # id -> display name
    clean: dict[str, Sequence[bool]]  # id -> clean correctness per sample
    cells: list[Cell] = field(default_factory=list)
    samples: Sequence[int] | None = None
    dataset: str = "mnist"
    stats: dict | None = None
    plots: bool = False
    formats: tuple[str, ...] = ("md", "tex", "csv", "html")


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()


def write_run(run_dir: Path, run: Run) -> Path:
    """Write ``run`` as a run directory: one clean cell per model plus the attack cells."""
    n = len(next(iter(run.clean.values())))
    samples = list(run.samples) if run.samples is not None else list(range(100, 100 + n))
    indices_hash = hashlib.sha256(np.asarray(samples, dtype="<i8").tobytes()).hexdigest()
    labels = {s: s % N_CLASSES for s in samples}
    clean_pred = {m: {s: labels[s] if ok else (labels[s] + 1) % N_CLASSES
                      for s, ok in zip(samples, c)} for m, c in run.clean.items()}
    cell_meta = []
    with ResultStore(run_dir) as store:
        cells = [Cell(m, "clean", "none", 0.0, c) for m, c in run.clean.items()] + run.cells
        for c in cells:
            key = _key(c.model, c.attack, c.threat, c.epsilon, run.dataset)
            info = CellInfo(key, c.model, c.attack, c.threat, c.epsilon, c.minimal_norm,
                            {"attack": c.attack}, indices_hash)
            store.ensure_cell(info)
            idx = list(c.samples) if c.samples is not None else samples
            dist = list(c.distance) if c.distance is not None else [None] * len(idx)
            rows = [ResultRow(sample_index=s, label=labels[s], clean_pred=clean_pred[c.model][s],
                              adv_pred=labels[s] if ok else (labels[s] + 3) % N_CLASSES,
                              adv_correct=bool(ok), distance=d, draws=(0,))
                    for s, ok, d in zip(idx, c.correct, dist)]
            store.add_results(info, rows)
            cell_meta.append({"key": key, "model": c.model, "attack": c.attack,
                              "epsilon": c.epsilon})
    attacks = list(dict.fromkeys((c.attack, c.threat, c.epsilon) for c in run.cells))
    write_manifest(run_dir, {
        "suite": {"name": run_dir.name, "models": list(run.models),
                  "attacks": [{"id": a, "threat": t, "epsilon": e} for a, t, e in attacks],
                  "stats": run.stats or {"test": "mcnemar", "alpha": 0.01, "correction": "none"},
                  "report": {"formats": list(run.formats), "plots": run.plots}},
        "dataset": {"name": run.dataset, "split": "test", "n": n, "seed": 0,
                    "indices_hash": indices_hash, "indices": samples},
        "models": [{"id": m, "name": name} for m, name in run.models.items()],
        "cells": cell_meta,
    })
    return run_dir


def test_written_run_reads_back(tmp_path: Path) -> None:
    run = Run(models={"a": "A"}, clean={"a": [True, False, True]},
              cells=[Cell("a", "pgd", "linf", 0.3, [True, False, False], minimal_norm=False)])
    df = read_results(write_run(tmp_path / "r", run))
    assert len(df) == 6
    pgd = df[df.attack == "pgd"].sort_values("sample_index")
    assert pgd.adv_correct.tolist() == [True, False, False]
    assert (pgd.clean_pred == pgd.label).tolist() == [True, False, True]
    assert pgd.distance.isna().all()
