"""The report path on a real run: runner -> SQLite store -> stats -> written reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustgen_bench.config import load_suite
from robustgen_bench.report import render_table, write_reports
from robustgen_bench.runner import run_suite
from robustgen_bench.store import read_results

SUITE = """\
name: report-e2e
dataset: {name: mnist, split: test, n: 12, seed: 3}
models: [mnist/tiny-cnn, mnist/tiny-noisy]
run: {batch_size: 6, verify_draws: 3}
stats: {test: mcnemar, alpha: 0.01, correction: holm}
report: {plots: true}
attacks:
  - {id: pgd, library: foolbox, attack: LinfPGD, threat: linf, epsilon: 0.2, steps: 5}
  - {id: ddn, library: foolbox, attack: DDNAttack, threat: l2, epsilon: 1.5, steps: 10}
"""


@pytest.mark.slow  # ~2 min on the shared 2-core machine (tiny CNN training + DDN)
def test_reports_from_a_real_run(tmp_zoo: Path, tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE)
    out = run_suite(load_suite(tmp_path / "suite.yaml"), tmp_path / "run")
    names = {p.name for p in write_reports(out)}
    assert {"table.md", "table.tex", "mcnemar_linf-0.2_pgd.csv", "mcnemar_linf-0.2_pgd.png", "distances.csv",
            "robust_accuracy_l2.png"} <= names
    df = read_results(out)
    table = pd.read_csv(out / "table.csv")
    # every attack cell of the table is the stored per-sample mean of that model and attack
    names = {"mnist/tiny-cnn": "Tiny", "mnist/tiny-noisy": "Tiny-noisy"}  # conftest display names
    for (model, attack), part in df[df.attack != "clean"].groupby(["model", "attack"]):
        row = table[(table.row == attack) & (table.model == names[model])]
        assert len(row) == 1 and row.n.iloc[0] == 12
        assert abs(row.accuracy.iloc[0] - part.adv_correct.mean()) < 1e-12, (model, attack)
    assert "Holm-corrected" in (out / "caption.txt").read_text()
    assert render_table([out], "md") == (out / "table.md").read_text()
