"""``rgbench compare``: pairing a re-run's rows with a committed board's rows.

Row sets come from real run directories (``write_run``: SQLite store + manifest) and from the
CSV that ``rgbench export`` and ``rgbench leaderboard`` write; the CLI runs as the installed
console script in a subprocess (exit 0 agree, 1 differ, 2 bad input).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from statsmodels.stats.contingency_tables import mcnemar
from test_stats_store import Cell, Run, write_run

from robustgen_bench.compare import compare_rows, load_rows, rows_agree
from robustgen_bench.errors import UserInputError
from robustgen_bench.export import export_csv
from robustgen_bench.report.leaderboard import write_leaderboard

N = 12
CLEAN = [True] * 10 + [False] * 2
PGD = [True, False] * 5 + [False, False]


def _run(tmp_path: Path, name: str, pgd: list[bool], samples: list[int] | None = None) -> Path:
    clean = CLEAN if samples is None else [CLEAN[s - 100] for s in samples]
    run = Run(models={"m/a": "A"}, clean={"m/a": clean}, samples=samples,
              cells=[Cell("m/a", "pgd", "linf", 0.3, pgd, samples=samples)])
    return write_run(tmp_path / name, run)


def test_identical_runs_agree_cell_by_cell(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", PGD)
    csv = tmp_path / "a.csv"
    csv.write_text(export_csv(a))
    cmp = compare_rows(load_rows(a), load_rows(csv))
    assert list(cmp.attack) == ["clean", "pgd"]
    assert list(cmp.paired) == [N, N]
    assert (cmp[["only_a", "only_b", "clean_differ", "robust_a_only", "robust_b_only"]] == 0).all().all()
    assert list(cmp.p_value) == [1.0, 1.0]
    assert rows_agree(cmp)


def test_flipped_verdicts_are_counted_by_direction_with_mcnemar_p(tmp_path: Path) -> None:
    flipped = list(PGD)
    flipped[0] = False          # robust in A only
    flipped[1] = flipped[3] = True  # robust in B only (two samples)
    cmp = compare_rows(load_rows(_run(tmp_path, "a", PGD)), load_rows(_run(tmp_path, "b", flipped)))
    pgd = cmp[cmp.attack == "pgd"].iloc[0]
    assert (pgd.robust_a_only, pgd.robust_b_only, pgd.clean_differ) == (1, 2, 0)
    a, b = np.array(PGD), np.array(flipped)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    assert pgd.p_value == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert not rows_agree(cmp)


def test_a_run_pairs_with_its_exported_csv_at_an_epsilon_of_many_digits(tmp_path: Path) -> None:
    # the CSV keeps 6 significant digits of 8/255; the store keeps all of them
    run = write_run(tmp_path / "a", Run(models={"m/a": "A"}, clean={"m/a": CLEAN},
                                        cells=[Cell("m/a", "pgd", "linf", 8 / 255, PGD)]))
    csv = tmp_path / "a.csv"
    csv.write_text(export_csv(run))
    cmp = compare_rows(load_rows(run), load_rows(csv))
    assert list(cmp.paired) == [N, N] and list(cmp.only_a) == [0, 0] and list(cmp.only_b) == [0, 0]
    assert rows_agree(cmp)


def test_a_prefix_run_pairs_its_samples_and_counts_the_rest(tmp_path: Path) -> None:
    prefix = list(range(100, 105))
    full, part = _run(tmp_path, "full", PGD), _run(tmp_path, "part", PGD[:5], samples=prefix)
    cmp = compare_rows(load_rows(full), load_rows(part))
    assert list(cmp.paired) == [5, 5] and list(cmp.only_a) == [N - 5, N - 5]
    assert list(cmp.only_b) == [0, 0] and rows_agree(cmp)


def test_different_images_under_one_index_are_refused(tmp_path: Path) -> None:
    a = load_rows(_run(tmp_path, "a", PGD))
    b = a.copy()
    b.loc[b.sample_index == 104, "label"] = 9 - b.loc[b.sample_index == 104, "label"]
    with pytest.raises(UserInputError, match="sample 104 has label"):
        compare_rows(a, b)


def test_a_csv_without_the_export_columns_names_the_file_and_columns(tmp_path: Path) -> None:
    bad = tmp_path / "rows.csv"
    pd.DataFrame({"model": ["m"], "attack": ["clean"]}).to_csv(bad, index=False)
    with pytest.raises(UserInputError, match=r"rows\.csv: missing columns \['threat'"):
        load_rows(bad)


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", PGD)
    flipped = [not v for v in PGD]
    b = _run(tmp_path, "b", flipped)
    same = run_cli("compare", a, a)
    assert same.returncode == 0, same.stderr
    assert f"identical: all {2 * N} paired rows agree" in same.stdout
    differ = run_cli("compare", a, b, "--format", "json")
    assert differ.returncode == 1, differ.stderr
    payload = json.loads(differ.stdout)
    assert payload["agree"] is False
    pgd = [c for c in payload["cells"] if c["attack"] == "pgd"][0]
    assert (pgd["robust_a_only"], pgd["robust_b_only"]) == (sum(PGD), N - sum(PGD))
    missing = run_cli("compare", a, tmp_path / "nowhere")
    assert missing.returncode == 2
    assert "nowhere: no such run directory or rows CSV" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_leaderboard_commits_rows_that_compare_with_its_run(tmp_path: Path) -> None:
    run = _run(tmp_path, "board", PGD)
    write_leaderboard(run, tmp_path / "lb")
    rows = tmp_path / "lb" / "board_rows.csv"
    assert "[board_rows.csv](board_rows.csv)" in (tmp_path / "lb" / "board.md").read_text()
    r = run_cli("compare", run, rows, "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("model,attack,threat,epsilon,paired")
