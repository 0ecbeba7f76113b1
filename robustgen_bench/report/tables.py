"""Paper tables as plain pandas frames (numbers as fractions; formatting happens in render.py).

The accuracy table is a *long* frame, one line per (row, model), with columns
``group,row,model,accuracy,ci_low,ci_high,n,model_id`` in table order: the Clean row, then one group per
(threat, ε) — its attacks in suite order and its ``All <threat>`` worst-case row. Renderers pivot it
to the paper layout (columns = models, rows = Clean / group header / attacks / All row).
"""

from __future__ import annotations

import pandas as pd

from robustgen_bench.report.runs import RunSet
from robustgen_bench.stats import (
    RowKey,
    wilson_interval,
    accuracy_frame,
    mcnemar_matrices,
    minimal_distances,
    per_sample_rows,
    significance_caption,
)

TABLE_COLUMNS = ["group", "row", "model", "accuracy", "ci_low", "ci_high", "n"]
#: After the documented columns: the zoo id of ``model`` (a display name such as ``CNN`` is shared
#: across datasets; the id joins with ``rgbench export``).
CSV_COLUMNS = TABLE_COLUMNS + ["model_id"]


def row_outcomes(runs: RunSet, *, strict: bool = True) -> dict[RowKey, dict[str, pd.Series]]:
    """Per table row, each model's per-sample correctness (see :func:`stats.per_sample_rows`)."""
    return per_sample_rows(runs.results, runs.models, runs.attack_order, strict=strict)


def accuracy_table(runs: RunSet, *, strict: bool = True, alpha: float = 0.05) -> pd.DataFrame:
    """Long accuracy frame (:data:`CSV_COLUMNS`) with Wilson (1 - ``alpha``) intervals.

    ``model`` holds display names, ``model_id`` the zoo ids.
    """
    acc = accuracy_frame(row_outcomes(runs, strict=strict), alpha)
    acc["model_id"] = acc.model
    acc["model"] = acc.model.map(runs.display)
    return acc[CSV_COLUMNS].reset_index(drop=True)


def wide(table: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Pivot a long table to index (group, row) x columns models, keeping the table's order."""
    index = pd.MultiIndex.from_frame(table[["group", "row"]].drop_duplicates())
    models = list(dict.fromkeys(table.model))
    out = table.pivot_table(index=["group", "row"], columns="model", values=value,
                            aggfunc="first", sort=False)
    return out.reindex(index=index, columns=models)


def mcnemar_tables(runs: RunSet) -> dict[RowKey, pd.DataFrame]:
    """Per row, the McNemar p-value matrix (display names on both axes), corrected per the suite."""
    mats = mcnemar_matrices(row_outcomes(runs, strict=True), correction=runs.stats.correction)
    return {k: m.rename(index=runs.display, columns=runs.display) for k, m in mats.items()}


def caption(runs: RunSet, table: pd.DataFrame | None = None) -> str:
    """Thesis-style caption: what the numbers are, the sample count, and the McNemar sentence."""
    table = accuracy_table(runs) if table is None else table
    mats = mcnemar_matrices(row_outcomes(runs, strict=True), correction=runs.stats.correction)
    sentence = significance_caption(mats, runs.names, alpha=runs.stats.alpha,
                                    correction=runs.stats.correction)
    ns = sorted(set(int(n) for n in table.n))
    count = (f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}") if ns else "0"
    dataset = runs.dataset.get("name")
    on = f" on {dataset} ({runs.dataset.get('split', 'test')})" if dataset else ""
    text = (f"Results of different models{on}. Reported numbers are accuracy under bounded "
            f"perturbations with Wilson 95% intervals. Results are based on {count} samples. "
            + sentence)
    checks = checks_sentence(runs)
    return f"{text} {checks}" if checks else text


def stored_checks(runs: RunSet) -> list:
    """The attack-failure check results stored with the runs (never recomputed here)."""
    from robustgen_bench.checks.storage import checks_of_runs

    return checks_of_runs(runs.run_dirs, runs.manifests, runs.models)


def checks_sentence(runs: RunSet) -> str:
    """The caption's sentence naming the models whose evaluation raised a check warning."""
    from robustgen_bench.checks.report import caption_sentence

    return caption_sentence(stored_checks(runs), runs.display, runs.models)


def distance_table(runs: RunSet) -> pd.DataFrame:
    """Closest-adversarial distances per model (Table 2.6 style); display names in ``model``."""
    d = minimal_distances(runs.results, runs.models)
    d["model"] = d.model.map(runs.display)
    return d


SWEEP_COLUMNS = ["of", "threat", "epsilon", "param", "value", "line", "model", "accuracy",
                 "ci_low", "ci_high", "n"]


def sweep_cells(runs: RunSet) -> dict[str, tuple[str, dict[str, object]]]:
    """Cell attack id -> (the suite's attack id, swept key -> value) for every swept cell."""
    out: dict[str, tuple[str, dict[str, object]]] = {}
    for man in runs.manifests:
        for a in (man.get("suite") or {}).get("attacks") or []:
            sw = a.get("sweep")
            if sw:
                out[str(a["id"])] = (str(sw["of"]), dict(sw["values"]))
    return out


def sweep_table(runs: RunSet, *, alpha: float = 0.05) -> pd.DataFrame:
    """Robust accuracy along each sweep: one line per (swept cell, model), :data:`SWEEP_COLUMNS`.

    ``param`` is the first swept key (the x axis) and ``value`` its value; ``line`` names the
    other swept keys' values (empty when one key is swept), so a plot draws one line per
    (model, line). Rows of the table's cells, in suite order; Wilson (1 - ``alpha``) intervals.
    """
    cells = sweep_cells(runs)
    records = []
    for key, per_model in row_outcomes(runs, strict=False).items():
        if key.kind != "attack" or key.attack not in cells:
            continue
        of, values = cells[key.attack]
        (param, value), *rest = values.items()
        line = ", ".join(f"{k}={v}" for k, v in rest)
        for model, s in per_model.items():
            k, n = int(s.sum()), int(len(s))
            low, high = wilson_interval(k, n, alpha)
            records.append({"of": of, "threat": key.threat, "epsilon": key.epsilon,
                            "param": param, "value": value, "line": line,
                            "model": runs.display(model), "accuracy": k / n if n else float("nan"),
                            "ci_low": low, "ci_high": high, "n": n})
    return pd.DataFrame.from_records(records, columns=SWEEP_COLUMNS)
