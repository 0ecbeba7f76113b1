"""Export per-sample rows of a run (CSV with the documented column order)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from robustgen_bench.errors import UserInputError
from robustgen_bench.store import DB_NAME, EXPORT_COLUMNS, read_run_results


#: Floats (ε, distances) are written with this many significant digits.
SIGNIFICANT_DIGITS = 6


def export_rows(run_dir: str | Path) -> pd.DataFrame:
    """The per-sample rows of a run directory (its cells and samples as last run, like its
    tables), :data:`EXPORT_COLUMNS` in that order."""
    run_dir = Path(run_dir)
    if not (run_dir / DB_NAME).is_file():
        raise UserInputError(f"no results store ({DB_NAME}) in this directory; expected a run "
                             "directory", file=run_dir)
    return read_run_results(run_dir)[EXPORT_COLUMNS].copy()


def export_csv(run_dir: str | Path) -> str:
    """CSV text: ``model,attack,threat,epsilon,sample_index,label,clean_pred,adv_pred,adv_correct,distance``.

    ``adv_correct`` is 0/1; ``distance`` is empty where no adversarial example was found.
    """
    df = export_rows(run_dir)
    df["adv_correct"] = df["adv_correct"].astype(int)
    buf = io.StringIO()
    df.to_csv(buf, index=False, na_rep="", float_format=f"%.{SIGNIFICANT_DIGITS}g")
    return buf.getvalue()
