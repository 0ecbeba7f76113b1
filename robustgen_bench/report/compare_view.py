"""How ``rgbench compare`` shows a comparison of two row sets (a rich table and summary lines)."""

from __future__ import annotations

import math

import pandas as pd
from rich.markup import escape
from rich.table import Table

from robustgen_bench.compare import rows_agree
from robustgen_bench.console import add_id_column


def comparison_table(cmp: pd.DataFrame, a: str, b: str) -> Table:
    """One row per cell of :func:`robustgen_bench.compare.compare_rows`."""
    t = Table(title=escape(f"A = {a}, B = {b}"))
    add_id_column(t, "model", [str(m) for m in cmp.model])
    add_id_column(t, "attack", [str(x) for x in cmp.attack])
    for col in ("ε", "paired", "only A", "only B", "clean ≠", "robust A only", "robust B only",
                "max |Δ dist|", "McNemar p"):
        t.add_column(col, justify="right")
    for r in cmp.itertuples(index=False):
        t.add_row(escape(str(r.model)), escape(str(r.attack)), f"{r.epsilon:g}", str(r.paired),
                  str(r.only_a), str(r.only_b), str(r.clean_differ), str(r.robust_a_only),
                  str(r.robust_b_only),
                  "–" if math.isnan(r.distance_max_diff) else f"{r.distance_max_diff:.3g}",
                  "–" if math.isnan(r.p_value) else f"{r.p_value:.3g}")
    return t


def comparison_lines(cmp: pd.DataFrame, a: str, b: str) -> list[str]:
    """The verdict in words: identical, or how many paired rows differ and where."""
    paired = int(cmp.paired.sum())
    differ = cmp.clean_differ + cmp.robust_a_only + cmp.robust_b_only
    lines = []
    if rows_agree(cmp):
        lines.append(f"identical: all {paired} paired rows agree (clean prediction and verdict)")
    else:
        cells = cmp[differ > 0]
        lines.append(f"differ: {int((cmp.robust_a_only + cmp.robust_b_only).sum())} verdicts and "
                     f"{int(cmp.clean_differ.sum())} clean predictions of {paired} paired rows, in "
                     f"{len(cells)} of {len(cmp)} cells; the smallest McNemar p is "
                     f"{float(cells.p_value.min()):.3g} (a randomized defense, or batches split "
                     "differently, e.g. by a --limit below the batch size, draw other randomness)")
    only_a, only_b = int(cmp.only_a.sum()), int(cmp.only_b.sum())
    if only_a or only_b:
        lines.append(f"not compared: {only_a} rows only in {a}, {only_b} only in {b}")
    return lines


__all__ = ["comparison_lines", "comparison_table"]
