"""Load one or several run directories from the store into one frame, refusing unsafe merges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from robustgen_bench.errors import UserInputError
from robustgen_bench.stats import CLEAN, SampleSetMismatch, StatsConfig
from robustgen_bench.store import DB_NAME, read_manifest, read_run_results


class RunDirError(UserInputError):
    """A run directory that cannot be read or merged (exit code 2)."""


@dataclass(frozen=True)
class RunSet:
    """Per-sample results of one or more runs on the same samples.

    ``names`` maps model id -> display name; ``attack_order`` is the suites' attack order.
    """

    results: pd.DataFrame
    names: dict[str, str]
    models: list[str]
    attack_order: list[str]
    stats: StatsConfig
    dataset: dict[str, Any]
    run_dirs: list[Path]
    manifests: list[dict[str, Any]] = field(default_factory=list)

    def display(self, model: str) -> str:
        return self.names.get(model, model)


def _load_one(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    if not (run_dir / DB_NAME).is_file():
        raise RunDirError(f"no results store ({DB_NAME}) in this directory; expected a run "
                          "directory written by `rgbench run`", file=run_dir)
    # only the cells and samples of the suite as last run (store.read_run_results says why)
    manifest = read_manifest(run_dir)
    return read_run_results(run_dir, manifest), manifest


def _unique_names(models: Sequence[str], names: dict[str, str]) -> dict[str, str]:
    """Display names, falling back to the id where two models share a name."""
    out = {m: names.get(m, m) for m in models}
    counts = pd.Series(list(out.values())).value_counts()
    return {m: (n if counts[n] == 1 else m) for m, n in out.items()}


def load_runs(run_dirs: Sequence[str | Path]) -> RunSet:
    """Read and combine runs; refuses runs on different samples or conflicting duplicate cells."""
    if not run_dirs:
        raise RunDirError("expected at least one run directory")
    frames: list[pd.DataFrame] = []
    manifests: list[dict[str, Any]] = []
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        df, man = _load_one(d)
        frames.append(df.assign(_run=str(d)))
        manifests.append(man)

    # Same dataset samples: dataset and split, the manifests' index hashes, then the stored
    # sample sets themselves (an index hash alone does not tell MNIST from Fashion-MNIST).
    datasets = {(str((m.get("dataset") or {}).get("name")), str((m.get("dataset") or {}).get("split")))
                for m in manifests if m.get("dataset")}
    if len(datasets) > 1:
        raise SampleSetMismatch("runs were evaluated on different datasets "
                                f"({', '.join(sorted(f'{n}/{s}' for n, s in datasets))}); "
                                "combine only runs of the same dataset and split")
    hashes = {str(d): (m.get("dataset") or {}).get("indices_hash") for d, m in zip(dirs, manifests)}
    known = {h for h in hashes.values() if h}
    if len(known) > 1:
        detail = ", ".join(f"{d}: {(h or '?')[:12]}" for d, h in hashes.items())
        raise SampleSetMismatch(f"runs were evaluated on different dataset samples ({detail}); "
                                "combine only runs with the same dataset name, split, n and seed")
    sets = [frozenset(f.sample_index.unique()) for f in frames]
    for d, s in zip(dirs[1:], sets[1:]):
        if s != sets[0]:
            raise SampleSetMismatch(
                f"{d} holds results on {len(s)} samples and {dirs[0]} on {len(sets[0])}, not the "
                "same samples; combine only runs of the same dataset subset")

    results = _merge(frames)
    names: dict[str, str] = {}
    attack_order: list[str] = []
    for man in manifests:
        for m in man.get("models", []):
            names.setdefault(str(m.get("id")), str(m.get("name") or m.get("id")))
        for a in (man.get("suite") or {}).get("attacks", []):
            if a.get("id") not in attack_order:
                attack_order.append(a.get("id"))
    suite_models = [m for man in manifests for m in (man.get("suite") or {}).get("models", [])]
    models = list(dict.fromkeys([m for m in suite_models if m in set(results.model)]
                                + list(dict.fromkeys(results.model))))
    stats = StatsConfig.from_manifest(manifests[0]) if manifests[0] else StatsConfig()
    return RunSet(results=results.drop(columns="_run"), names=_unique_names(models, names),
                  models=models, attack_order=attack_order, stats=stats,
                  dataset=dict(manifests[0].get("dataset") or {}), run_dirs=dirs,
                  manifests=manifests)


def _merge(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate runs; the same (model, attack, threat, ε) from two runs must be the same cell.

    Clean rows of a model are taken from the first run that has them (they re-measure the same
    thing); an attack cell present in two runs with different configs is ambiguous and refused.
    """
    if len(frames) == 1:
        return frames[0]
    seen: dict[tuple[str, str, str, float], tuple[str, str]] = {}
    keep: list[pd.DataFrame] = []
    for f in frames:
        for (model, attack, threat, eps), cell in f.groupby(["model", "attack", "threat", "epsilon"]):
            ident = (model, attack, threat, float(eps))
            keys = tuple(sorted(cell.cell_key.unique()))
            if ident in seen:
                if attack == CLEAN or seen[ident][0] == keys[0]:
                    continue
                raise RunDirError(
                    f"model {model!r}, attack {attack!r} ({threat}, ε={eps:g}) is stored in both "
                    f"{seen[ident][1]} and {cell._run.iloc[0]} with different configurations; "
                    "combine runs whose cells do not overlap or use one of them")
            seen[ident] = (keys[0], str(cell._run.iloc[0]))
            keep.append(cell)
    return pd.concat(keep, ignore_index=True)


def incomplete_cells(runs: RunSet) -> list[str]:
    """Cells of the runs' manifests with fewer stored samples than the dataset subset, described.

    Empty when every planned (model, attack, ε) cell holds all ``dataset.n`` samples.
    """
    counts = runs.results.groupby("cell_key").size().to_dict()
    missing: list[str] = []
    for man in runs.manifests:
        n = int((man.get("dataset") or {}).get("n", 0))
        for c in man.get("cells", []):
            got = int(counts.get(c.get("key"), 0))
            if got < n:
                missing.append(f"{c.get('model')} / {c.get('attack')} (ε={c.get('epsilon')}): "
                               f"{got} of {n} samples")
    return missing


def _subset_indices(runs: RunSet) -> list[int]:
    indices = runs.dataset.get("indices")
    if not indices:
        raise RunDirError("the run's manifest lists no sample indices; cannot take a prefix",
                          file=runs.run_dirs[0])
    return [int(i) for i in indices]


def finished_prefix(runs: RunSet) -> int:
    """The largest K such that the subset's first K samples are stored in every planned cell."""
    indices = _subset_indices(runs)
    keys = {c["key"] for man in runs.manifests for c in man.get("cells", []) if "key" in c}
    stored = runs.results.groupby("cell_key").sample_index.agg(set).to_dict()
    k = len(indices)
    for key in keys:
        have = stored.get(key, set())
        j = 0
        while j < k and indices[j] in have:
            j += 1
        k = j
    return k


def restrict(runs: RunSet, limit: int) -> RunSet:
    """``runs`` on the first ``limit`` samples of the seeded subset only (what ``--limit`` ran).

    Refused (naming the largest possible K) unless every planned cell holds all of them, so
    every row of the table is computed on the same samples.
    """
    if limit < 1:
        raise RunDirError(f"expected a positive number of samples, got {limit}", key="--limit")
    k = finished_prefix(runs)
    if limit > k:
        raise RunDirError(f"only the first {k} samples are finished in every cell; "
                          f"expected --limit ≤ {k}", key="--limit")
    keep = set(_subset_indices(runs)[:limit])
    results = runs.results[runs.results.sample_index.isin(keep)].reset_index(drop=True)
    return replace(runs, results=results, dataset={**runs.dataset, "n": limit})
