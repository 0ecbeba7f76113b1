"""Compare two sets of per-sample results: a re-run against a committed board's rows.

Each side is a run directory (``results.sqlite``) or a rows CSV written by ``rgbench export`` (a
board's ``<name>_rows.csv``). Rows are paired on (model, attack, threat, ε, sample index); rows
only one side has are counted, not compared, so a ``--limit`` prefix run compares with a full
one. Per cell: how many paired rows agree on the clean prediction and on the verdict, the
discordant verdicts in each direction, and the exact McNemar p-value of the paired difference
(:func:`robustgen_bench.stats.mcnemar_pvalue`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robustgen_bench.errors import UserInputError
from robustgen_bench.export import SIGNIFICANT_DIGITS, export_rows
from robustgen_bench.stats import mcnemar_pvalue
from robustgen_bench.store import EXPORT_COLUMNS

KEY = ["model", "attack", "threat", "epsilon", "sample_index"]
CELL = KEY[:-1]
COMPARISON_COLUMNS = ["model", "attack", "threat", "epsilon", "paired", "only_a", "only_b",
                      "clean_differ", "robust_a_only", "robust_b_only", "distance_max_diff",
                      "p_value"]


def load_rows(source: str | Path) -> pd.DataFrame:
    """The per-sample rows of a run directory or an exported rows CSV (:data:`EXPORT_COLUMNS`).

    ``adv_correct`` bool, ``epsilon``/``distance`` float (NaN distance: none found).
    """
    source = Path(source)
    if source.is_dir():
        df = export_rows(source)
    elif source.is_file():
        try:
            df = pd.read_csv(source)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserInputError(f"not a rows CSV ({e}); expected the output of `rgbench export`",
                                 file=source) from None
        missing = [c for c in EXPORT_COLUMNS if c not in df.columns]
        if missing:
            raise UserInputError(f"missing columns {missing}; expected the columns of "
                                 f"`rgbench export`: {','.join(EXPORT_COLUMNS)}", file=source)
        df = df[EXPORT_COLUMNS].copy()
    else:
        raise UserInputError("no such run directory or rows CSV", file=source)
    df["adv_correct"] = df["adv_correct"].astype(bool)
    # ε as the export writes it, so that a run directory pairs with a CSV (8/255 included)
    df["epsilon"] = [float(f"{e:.{SIGNIFICANT_DIGITS}g}") for e in df["epsilon"].astype(float)]
    df["distance"] = df["distance"].astype(float)
    return df


def compare_rows(a: pd.DataFrame, b: pd.DataFrame, *, names: tuple[str, str] = ("A", "B")
                 ) -> pd.DataFrame:
    """One line per cell present on either side, :data:`COMPARISON_COLUMNS`.

    ``paired``: samples both sides hold; ``only_a``/``only_b``: samples one side holds;
    ``clean_differ``: paired samples whose clean prediction differs; ``robust_a_only`` /
    ``robust_b_only``: paired samples robust on one side only; ``distance_max_diff``: the largest
    |distance difference| where both found an adversarial example (NaN if none);
    ``p_value``: exact McNemar test of the paired verdicts (1 when none differ).
    Raises :class:`UserInputError` when a sample index carries different labels on the two
    sides (they evaluated different images).
    """
    merged = a.merge(b, on=KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    both = merged[merged["_merge"] == "both"]
    bad = both[both.label_a != both.label_b]
    if len(bad):
        r = bad.iloc[0]
        raise UserInputError(
            f"sample {int(r.sample_index)} has label {int(r.label_a)} in {names[0]} and "
            f"{int(r.label_b)} in {names[1]}: the two evaluated different images (compare runs of "
            "the same suite dataset: name, split, n, seed)")
    records = []
    for cell, part in merged.groupby(CELL, sort=False):
        paired = part[part["_merge"] == "both"]
        ra, rb = paired.adv_correct_a.astype(bool), paired.adv_correct_b.astype(bool)
        dd = (paired.distance_a - paired.distance_b).abs().dropna()
        records.append({
            **dict(zip(CELL, cell)), "paired": int(len(paired)),
            "only_a": int((part["_merge"] == "left_only").sum()),
            "only_b": int((part["_merge"] == "right_only").sum()),
            "clean_differ": int((paired.clean_pred_a != paired.clean_pred_b).sum()),
            "robust_a_only": int((ra & ~rb).sum()), "robust_b_only": int((~ra & rb).sum()),
            "distance_max_diff": float(dd.max()) if len(dd) else math.nan,
            "p_value": mcnemar_pvalue(ra.to_numpy(), rb.to_numpy()) if len(paired) else math.nan})
    return pd.DataFrame.from_records(records, columns=COMPARISON_COLUMNS)


def rows_agree(comparison: pd.DataFrame) -> bool:
    """True when at least one row is paired and every paired row has the same clean prediction
    and the same verdict on both sides."""
    c = comparison
    return bool(c.paired.sum() > 0 and (c.clean_differ + c.robust_a_only + c.robust_b_only).sum() == 0)


__all__ = ["COMPARISON_COLUMNS", "compare_rows", "load_rows", "rows_agree"]
