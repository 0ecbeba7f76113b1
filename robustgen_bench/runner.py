"""Plan cells (model × attack × budget), execute them, skip what is stored, resume after a crash.

Data flow: :class:`~robustgen_bench.config.Suite` → :func:`plan` → :func:`run_suite` → store.
Samples are processed in fixed batches (positions in the seeded subset), each committed
atomically, so an interrupted run resumes with the same batches and the same per-batch seeds:
its final rows equal an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.attacks.verification import majority_vote, predict_draws
from robustgen_bench.config import Suite
from robustgen_bench.data import EvalSubset, load_subset
from robustgen_bench.store import CellInfo, ResultRow, ResultStore, read_results, write_manifest
from robustgen_bench.zoo import ZooEntry, build_defense, get_entry

log = logging.getLogger(__name__)

CLEAN = "clean"


@dataclass(frozen=True)
class Cell:
    """One (model, attack, epsilon) unit of work; ``attack`` is None for the clean cell."""

    model: str
    attack: AttackSpec | None
    key: str

    @property
    def label(self) -> str:
        if self.attack is None:
            return f"{self.model} · clean"
        return f"{self.model} · {self.attack.id} ({self.attack.threat.label} ε={self.attack.epsilon:g})"


def _weights_fingerprint(entry: ZooEntry) -> list[str]:
    return [w.sha256 for w in entry.weights]


def cell_key(entry: ZooEntry, suite: Suite, attack: AttackSpec | None) -> str:
    """sha256 of the cell's canonical config (model, its weights and config, data, attack)."""
    canon = {
        "model": entry.id,
        "weights": _weights_fingerprint(entry),
        "model_config": dict(entry.config),
        "adaptive": {"gradient": entry.adaptive.gradient.value, "eot": entry.adaptive.eot,
                     "randomized": entry.adaptive.randomized},
        "dataset": {"name": suite.dataset.name.value, "split": suite.dataset.split,
                    "seed": suite.dataset.seed},
        "attack": None if attack is None else attack.canonical(),
        "clean_verify_draws": suite.run.verify_draws,
    }
    return hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()


def plan(suite: Suite) -> list[Cell]:
    """Every cell of the suite: per model, its clean cell first, then each attack budget."""
    cells: list[Cell] = []
    for mid in suite.models:
        entry = get_entry(mid)
        cells.append(Cell(mid, None, cell_key(entry, suite, None)))
        for a in suite.attacks:
            cells.append(Cell(mid, a, cell_key(entry, suite, a)))
    return cells


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("robustgen-bench", "torch", "torchvision", "foolbox", "pyautoattack", "torchattacks",
                "statsmodels", "pandas", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest(suite: Suite, subset: EvalSubset, entries: dict[str, ZooEntry],
             timings: dict[str, float], cells: list[Cell]) -> dict[str, Any]:
    """Provenance of a run: code, versions, weights, suite, seeds, samples, machine, timings."""
    return {
        "suite": suite.canonical(),
        "suite_hash": suite.hash(),
        "suite_file": str(suite.source) if suite.source else None,
        "command_line": {"set": list(suite.overrides), "limit": suite.limit},
        "git_commit": _git_commit(),
        "versions": _versions(),
        "models": [{"id": e.id, "name": e.name, "family": e.family or e.builder,
                    "weights_sha256": _weights_fingerprint(e),
                    "adaptive": {"gradient": e.adaptive.gradient.value, "randomized": e.adaptive.randomized,
                                 "eot": e.adaptive.eot}} for e in entries.values()],
        "dataset": {"name": suite.dataset.name.value, "split": suite.dataset.split,
                    "n": suite.dataset.n, "seed": suite.dataset.seed,
                    "indices_hash": subset.hash, "indices": [int(i) for i in subset.indices]},
        "seeds": {"dataset": suite.dataset.seed, "attacks": sorted({a.seed for a in suite.attacks})},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "cells": [{"key": c.key, "model": c.model,
                   "attack": CLEAN if c.attack is None else c.attack.id,
                   "epsilon": 0.0 if c.attack is None else c.attack.epsilon,
                   "seconds": round(timings.get(c.key, 0.0), 3)} for c in cells],
    }


ProgressFactory = Callable[[str, int, int], Any]


class _NullProgress:
    def advance(self, n: int) -> None:  # noqa: D401
        pass

    def close(self) -> None:
        pass


def run_suite(suite: Suite, run_dir: str | Path, *, data_dir: str | Path | None = None,
              progress: ProgressFactory | None = None) -> Path:
    """Execute every pending cell of ``suite`` into ``run_dir``; returns the run directory.

    ``progress(label, total, done)`` returns an object with ``advance(n)`` and ``close()``.
    """
    from robustgen_bench.attacks import make_attack

    run_dir = Path(run_dir)
    subset = load_subset(suite.dataset.name, suite.dataset.split, suite.dataset.n,
                         suite.dataset.seed, data_dir)
    cells = plan(suite)
    entries = {m: get_entry(m) for m in suite.models}
    progress = progress or (lambda label, total, done: _NullProgress())
    store = ResultStore(run_dir)
    try:
        timings = store.cell_seconds()
        write_manifest(run_dir, manifest(suite, subset, entries, timings, cells))
        n = len(subset.y)
        batches = _batches(n, suite.run.batch_size)
        for model_id in suite.models:
            entry = entries[model_id]
            model_cells = [c for c in cells if c.model == model_id]
            pending = {c.key: store.done_indices(c.key) for c in model_cells}
            wanted = {int(i) for i in subset.indices}
            if all(wanted <= done for done in pending.values()):
                continue
            defense = build_defense(entry)
            clean_cell = model_cells[0]
            clean_pred = _run_clean(store, suite, clean_cell, entry, defense, subset, batches,
                                    progress)
            for cell in model_cells[1:]:
                assert cell.attack is not None
                info = _cell_info(cell, subset)
                store.ensure_cell(info)
                done = store.done_indices(cell.key)
                todo = [b for b in batches if not {int(subset.indices[i]) for i in b} <= done]
                if not todo:
                    continue
                attack = make_attack(cell.attack)
                bar = progress(cell.label, n, n - sum(len(b) for b in todo))
                try:
                    for b in todo:
                        idx = torch.tensor(list(b))
                        t0 = time.perf_counter()
                        # The attack seeds itself from its seed and the batch's sample indices, so
                        # a resumed batch sees the same randomness as in an uninterrupted run.
                        rows = attack(defense, entry.adaptive, subset.x[idx], subset.y[idx],
                                      [int(subset.indices[i]) for i in b], clean_pred[idx])
                        _check_rows(rows, [int(subset.indices[i]) for i in b], cell)
                        store.add_results(info, rows, time.perf_counter() - t0)
                        if b.start == 0 and suite.run.save_examples:
                            _save_examples(run_dir, cell, subset.x[idx], subset.y[idx],
                                           attack.last_x_adv, rows, suite.run.save_examples)
                        bar.advance(len(b))
                finally:
                    bar.close()
        write_manifest(run_dir, manifest(suite, subset, entries, store.cell_seconds(), cells))
    finally:
        store.close()
    return run_dir


def _save_examples(run_dir: Path, cell: Cell, x: torch.Tensor, y: torch.Tensor,
                   x_adv: torch.Tensor, rows: list[ResultRow], k: int) -> None:
    """Keep the first ``k`` clean/adversarial pairs of a cell for the report's example grids.

    Tensors are named ``<model>|<attack>|x`` (k, C, H, W), ``|x_adv``, ``|y`` and ``|adv_pred``;
    a later budget of the same attack replaces an earlier one (grids show the largest budget).
    """
    from safetensors.torch import load_file, save_file

    path = run_dir / "examples.safetensors"
    tensors = load_file(str(path)) if path.is_file() else {}
    assert cell.attack is not None
    name = f"{cell.model}|{cell.attack.id}"
    tensors[f"{name}|x"] = x[:k].contiguous()
    # Only adversarials that count at this budget; a robust sample shows its clean input (a
    # minimal-norm attack's closest adversarial may lie far beyond epsilon).
    broken = torch.tensor([not r.adv_correct for r in rows[:k]]).view(-1, *([1] * (x.dim() - 1)))
    tensors[f"{name}|x_adv"] = torch.where(broken, x_adv[:k].to(x.dtype), x[:k]).contiguous()
    tensors[f"{name}|y"] = y[:k].contiguous()
    tensors[f"{name}|adv_pred"] = torch.tensor([r.adv_pred for r in rows[:k]], dtype=torch.long)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def _batch_seed(seed: int, start: int) -> int:
    return (seed * 1_000_003 + start) % (2**31 - 1)


def _cell_info(cell: Cell, subset: EvalSubset) -> CellInfo:
    a = cell.attack
    return CellInfo(
        cell_key=cell.key, model=cell.model, attack=CLEAN if a is None else a.id,
        threat="none" if a is None else a.threat.value, epsilon=0.0 if a is None else a.epsilon,
        minimal_norm=False if a is None else bool(_minimal_norm(a)),
        config={} if a is None else a.canonical(), indices_hash=subset.hash,
    )


def _minimal_norm(a: AttackSpec) -> bool:
    from robustgen_bench.attacks import get_attack_class

    return bool(getattr(get_attack_class(a.library, a.attack), "MINIMAL_NORM", False))


def _check_rows(rows: list[ResultRow], expected: list[int], cell: Cell) -> None:
    got = sorted(r.sample_index for r in rows)
    if got != sorted(expected):
        raise RuntimeError(f"{cell.label}: the attack returned rows for samples {got[:5]}..., "
                           f"expected {sorted(expected)[:5]}...")


def _run_clean(store: ResultStore, suite: Suite, cell: Cell, entry: ZooEntry, defense: Any,
               subset: EvalSubset, batches: list[range], progress: ProgressFactory) -> torch.Tensor:
    """Clean predictions (N,) for every sample, stored as the model's 'clean' cell."""
    info = _cell_info(cell, subset)
    store.ensure_cell(info)
    done = store.done_indices(cell.key)
    todo = [b for b in batches if not {int(subset.indices[i]) for i in b} <= done]
    if todo:
        bar = progress(cell.label, len(subset.y), len(subset.y) - sum(len(b) for b in todo))
        try:
            for b in todo:
                idx = torch.tensor(list(b))
                t0 = time.perf_counter()
                with torch.random.fork_rng():
                    torch.manual_seed(_batch_seed(suite.dataset.seed, b.start))
                    # Same verdict rule as attacks: majority of draws, ties to the true label.
                    n_draws = suite.run.verify_draws if entry.adaptive.randomized else 1
                    draws = predict_draws(defense, subset.x[idx], n_draws)
                pred = majority_vote(draws, subset.y[idx])
                rows = [ResultRow(sample_index=int(subset.indices[i]), label=int(subset.y[i]),
                                  clean_pred=int(pred[j]), adv_pred=int(pred[j]),
                                  adv_correct=bool(pred[j] == subset.y[i]), distance=None,
                                  draws=tuple(int(d) for d in draws[:, j]))
                        for j, i in enumerate(b)]
                store.add_results(info, rows, time.perf_counter() - t0)
                bar.advance(len(b))
        finally:
            bar.close()
    df = read_results(store.run_dir, [cell.key])
    by_index = dict(zip(df.sample_index.astype(int), df.clean_pred.astype(int)))
    return torch.tensor([by_index[int(i)] for i in subset.indices], dtype=torch.long)


__all__ = ["Cell", "plan", "run_suite", "cell_key"]
