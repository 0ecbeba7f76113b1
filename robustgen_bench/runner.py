"""Plan cells (model × attack × budget), execute them, skip what is stored, resume after a crash.

Data flow: :class:`~robustgen_bench.config.Suite` → :func:`plan` → :func:`run_suite` → store.
Samples are processed in fixed batches (positions in the seeded subset), each committed
atomically, so an interrupted run resumes with the same batches and the same per-batch seeds:
its final rows equal an uninterrupted run's. Batches run on an executor (this process, or Ray
workers; :mod:`robustgen_bench.executors`); only this module writes the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from robustgen_bench.adaptive import GradientHook
from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.config import Suite
from robustgen_bench.data import EvalSubset, load_subset
from robustgen_bench.device import device_type
from robustgen_bench.executors import BatchTask, Executor, LocalExecutor
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


def _attack_canonical(entry: ZooEntry, attack: AttackSpec) -> dict[str, object]:
    """The attack's canonical form as it bears on this entry's rows. The surrogate hook is left
    out for exactly differentiable entries (their surrogate is the model itself, whatever the
    hook), so that their cells are shared by runs that differ only in the hook."""
    canon = attack.canonical()
    if entry.adaptive.gradient is GradientHook.EXACT:
        canon.pop("surrogate", None)
    return canon


def cell_key(entry: ZooEntry, suite: Suite, attack: AttackSpec | None,
             device: str = "cpu") -> str:
    """sha256 of the cell's canonical config (model, its weights and config, data, attack, and
    the device type when it is not the CPU: GPU rows may differ by floating-point noise)."""
    canon: dict[str, object] = {
        "model": entry.id,
        "weights": _weights_fingerprint(entry),
        "model_config": dict(entry.config),
        "adaptive": entry.adaptive.canonical(),
        "dataset": {"name": suite.dataset.name.value, "split": suite.dataset.split,
                    "seed": suite.dataset.seed},
        "attack": None if attack is None else _attack_canonical(entry, attack),
        "clean_verify_draws": suite.run.verify_draws,
    }
    if device_type(device) != "cpu":
        canon["device"] = device_type(device)
    return hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()


def plan(suite: Suite, device: str = "cpu") -> list[Cell]:
    """Every cell of the suite: per model, its clean cell first, then each attack budget."""
    cells: list[Cell] = []
    for mid in suite.models:
        entry = get_entry(mid)
        cells.append(Cell(mid, None, cell_key(entry, suite, None, device)))
        for a in suite.attacks:
            cells.append(Cell(mid, a, cell_key(entry, suite, a, device)))
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
             timings: dict[str, float], cells: list[Cell],
             executor: Executor | None = None, device: str = "cpu") -> dict[str, Any]:
    """Provenance of a run: code, versions, weights, suite, seeds, samples, machine, timings."""
    return {
        "suite": suite.canonical(),
        "suite_hash": suite.hash(),
        "checks": suite.checks.canonical(),
        "suite_file": str(suite.source) if suite.source else None,
        "command_line": {"set": list(suite.overrides), "limit": suite.limit},
        # Where the batches ran; it does not enter any cell key (rows are the same everywhere).
        "executor": repr(executor or LocalExecutor()),
        # The device does enter the cell keys of non-CPU runs (GPU rows may differ by round-off).
        "device": device,
        "git_commit": _git_commit(),
        "versions": _versions(),
        "models": [{"id": e.id, "name": e.name, "family": e.family or e.builder,
                    "weights_sha256": _weights_fingerprint(e),
                    "adaptive": e.adaptive.canonical()} for e in entries.values()],
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
              progress: ProgressFactory | None = None, executor: Executor | None = None,
              device: str = "cpu") -> Path:
    """Execute every pending cell of ``suite`` into ``run_dir``; returns the run directory.

    ``progress(label, total, done)`` returns an object with ``advance(n)`` and ``close()``.
    ``executor`` runs the batches (default: in this process); whichever runs them, the rows are
    the same and only this function writes the store. Clean cells run first: every attack batch
    needs its model's stored clean predictions. Attack cells of a model run batch by batch
    (batch 0 of every attack, then batch 1, ...): a long run that is stopped leaves a prefix of
    samples finished under every attack, which ``rgbench run SUITE --limit K`` turns into
    complete tables without attacking again.
    """
    run_dir = Path(run_dir)
    subset = load_subset(suite.dataset.name, suite.dataset.split, suite.dataset.n,
                         suite.dataset.seed, data_dir)
    cells = plan(suite, device)
    entries = {m: get_entry(m) for m in suite.models}
    preflight(entries.values())
    executor = executor or LocalExecutor()
    created = not run_dir.exists()
    store = ResultStore(run_dir)
    try:
        write_manifest(run_dir, manifest(suite, subset, entries, store.cell_seconds(), cells,
                                         executor, device))
        batches = _batches(len(subset.y), suite.run.batch_size)
        bars = _Bars(progress, store, len(subset.y))
        clean_cells = [c for c in cells if c.attack is None]
        attack_cells = [c for c in cells if c.attack is not None]
        tasks = (t for c in clean_cells
                 for t in _tasks([c], entries[c.model], suite, subset, batches, store, None, bars,
                                 device))
        _drain(executor, bars.opening(tasks), store, bars, cells, subset, run_dir, suite)
        clean_pred = {c.model: _clean_predictions(store, c, subset) for c in clean_cells}
        tasks = (t for m in suite.models
                 for t in _tasks([c for c in attack_cells if c.model == m], entries[m], suite,
                                 subset, batches, store, clean_pred[m], bars, device))
        _drain(executor, bars.opening(tasks), store, bars, cells, subset, run_dir, suite)
        write_manifest(run_dir, manifest(suite, subset, entries, store.cell_seconds(), cells,
                                         executor, device))
    except BaseException:
        stored = store.row_count() > 0
        store.close()
        if created and not stored:  # a run that failed before storing a sample leaves no folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    store.close()
    return run_dir


def preflight(entries: Iterable[ZooEntry]) -> None:
    """Build every defense once (sha256, weights format, builder module, strict load) before any
    work, so that a broken zoo entry is a ZooError (bad input) and no run directory is created."""
    for entry in entries:
        build_defense(entry)


def _tasks(cells: list[Cell], entry: ZooEntry, suite: Suite, subset: EvalSubset,
           batches: list[range], store: ResultStore, clean_pred: torch.Tensor | None,
           bars: _Bars, device: str = "cpu") -> Iterator[BatchTask]:
    """The batches of one model's ``cells`` not fully stored yet, batch-major (registers cells)."""
    fingerprint = entry.fingerprint()
    batch_indices = [tuple(int(subset.indices[i]) for i in b) for b in batches]
    done: dict[str, set[int]] = {}
    for cell in cells:
        store.ensure_cell(_cell_info(cell, subset))
        done[cell.key] = store.done_indices(cell.key)
        bars.expect(cell.key, sum(len(ix) for ix in batch_indices
                                  if not set(ix) <= done[cell.key]))
    for b, indices in zip(batches, batch_indices):
        idx = torch.tensor(list(b))
        for cell in cells:
            if set(indices) <= done[cell.key]:
                continue
            yield BatchTask(
                cell_key=cell.key, label=cell.label, model=cell.model,
                entry_fingerprint=fingerprint, attack=cell.attack,
                x=subset.x[idx], y=subset.y[idx], indices=indices,
                clean_pred=None if clean_pred is None else clean_pred[idx],
                clean_seed=_batch_seed(suite.dataset.seed, b.start),
                verify_draws=suite.run.verify_draws,
                keep_adv=cell.attack is not None and b.start == 0 and suite.run.save_examples > 0,
                device=device)


def _drain(executor: Executor, tasks: Iterator[BatchTask], store: ResultStore, bars: _Bars,
           planned: list[Cell], subset: EvalSubset, run_dir: Path, suite: Suite) -> None:
    """Store each result as it arrives (one transaction per batch), advance its cell's bar."""
    cells = {c.key: c for c in planned}
    try:
        for r in executor.map(tasks):
            t = r.task
            cell = cells[t.cell_key]
            _check_rows(r.rows, list(t.indices), cell)
            added = store.add_results(_cell_info(cell, subset), r.rows, r.seconds,
                                      counters=getattr(r, "counters", None))
            if r.x_adv is not None:
                _save_examples(run_dir, cell, t.x, t.y, r.x_adv, r.rows, suite.run.save_examples)
            # Count stored samples, not batch sizes: a resumed batch may repeat some.
            bars.advance(t.cell_key, added, finished=len(t.indices))
    finally:
        bars.close_all()


class _Bars:
    """One progress bar per cell, opened when the cell's first batch is handed to the executor
    and closed when its last batch is stored (several are open at once under Ray)."""

    def __init__(self, factory: ProgressFactory | None, store: ResultStore, total: int) -> None:
        self._factory = factory or (lambda label, total, done: _NullProgress())
        self._store, self._total = store, total
        self._pending: dict[str, int] = {}
        self._open: dict[str, tuple[Any, int]] = {}  # cell key -> (bar, samples still to finish)

    def expect(self, key: str, samples: int) -> None:
        """The cell's pending batches hold ``samples`` samples (its bar closes after them)."""
        self._pending[key] = samples

    def opening(self, tasks: Iterator[BatchTask]) -> Iterator[BatchTask]:
        """Pass ``tasks`` through, opening a cell's bar at its first task."""
        for t in tasks:
            if t.cell_key not in self._open:
                done = len(self._store.done_indices(t.cell_key))
                self._open[t.cell_key] = (self._factory(t.label, self._total, done),
                                          self._pending.pop(t.cell_key))
            yield t

    def advance(self, key: str, added: int, finished: int) -> None:
        """``added`` new samples stored; ``finished`` samples of the cell's batches are done."""
        bar, left = self._open[key]
        bar.advance(added)
        left -= finished
        self._open[key] = (bar, left)
        if left <= 0:
            bar.close()
            del self._open[key]

    def close_all(self) -> None:
        for bar, _ in self._open.values():
            bar.close()
        self._open.clear()


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


def _clean_predictions(store: ResultStore, cell: Cell, subset: EvalSubset) -> torch.Tensor:
    """The stored clean predictions (N,) of ``cell``'s model, in subset order."""
    df = read_results(store.run_dir, [cell.key])
    by_index = dict(zip(df.sample_index.astype(int), df.clean_pred.astype(int)))
    return torch.tensor([by_index[int(i)] for i in subset.indices], dtype=torch.long)


__all__ = ["Cell", "plan", "run_suite", "cell_key"]
