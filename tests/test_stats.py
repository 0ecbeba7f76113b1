"""Statistics against independent computations: scipy's binomial test, the Wilson formula,
statsmodels' Holm, and hand-counted per-sample data (all read back from a real store)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, norm
from statsmodels.stats.multitest import multipletests
from test_stats_store import Cell, Run, write_run

from robustgen_bench.errors import UserInputError
from robustgen_bench.report.runs import load_runs
from robustgen_bench.report.tables import accuracy_table, caption, row_outcomes
from robustgen_bench.stats import (
    RowKey,
    SampleSetMismatch,
    format_epsilon,
    mcnemar_matrix,
    mcnemar_pvalue,
    minimal_distances,
    require_same_samples,
    robust_accuracy_curve,
    wilson_interval,
)

T, F = True, False


def _paired(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    perm = np.random.default_rng(both + 7 * a_only + 13 * b_only).permutation(len(a))
    return np.array(a)[perm], np.array(b)[perm]


@pytest.mark.parametrize("counts", [(50, 7, 2, 10), (0, 0, 10, 0), (30, 12, 12, 5),
                                    (100, 1, 0, 3), (100, 0, 1, 3), (3, 25, 40, 9)])
def test_mcnemar_equals_exact_binomial_on_discordant_pairs(counts: tuple[int, int, int, int]) -> None:
    a, b = _paired(*counts)
    b01, b10 = counts[1], counts[2]
    expected = binomtest(b01, b01 + b10, 0.5, alternative="two-sided").pvalue
    assert mcnemar_pvalue(a, b) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_mcnemar_all_agree_is_one_and_one_discordant_is_one() -> None:
    a, b = _paired(40, 0, 0, 10)
    assert mcnemar_pvalue(a, b) == 1.0  # no discordant pair: no evidence of any difference
    a, b = _paired(40, 1, 0, 10)
    assert mcnemar_pvalue(a, b) == pytest.approx(binomtest(1, 1, 0.5).pvalue) == 1.0
    a, b = _paired(0, 0, 12, 0)
    assert mcnemar_pvalue(a, b) == pytest.approx(2 * 0.5 ** 12)


def test_mcnemar_matrix_from_store_matches_binomtest(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 60
    clean = {m: rng.random(n) < p for m, p in (("a", 0.9), ("b", 0.7), ("c", 0.5))}
    run = load_runs([write_run(tmp_path / "r", Run({"a": "A", "b": "B", "c": "C"}, clean))])
    mat = mcnemar_matrix(row_outcomes(run)[RowKey("clean")])
    for x, y in itertools.combinations("abc", 2):
        b01 = int(np.sum(clean[x] & ~clean[y]))
        b10 = int(np.sum(~clean[x] & clean[y]))
        expected = binomtest(b01, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
        assert mat.loc[x, y] == mat.loc[y, x] == pytest.approx(expected)
    assert mat.isna().to_numpy().diagonal().all()


def test_holm_matches_statsmodels_multipletests() -> None:
    rng = np.random.default_rng(11)
    per_model = {m: pd.Series(rng.random(80) < p, index=range(80))
                 for m, p in zip("abcde", (0.9, 0.85, 0.6, 0.55, 0.3))}
    raw = mcnemar_matrix(per_model)
    holm = mcnemar_matrix(per_model, correction="holm")
    pairs = list(itertools.combinations("abcde", 2))
    expected = multipletests([raw.loc[x, y] for x, y in pairs], method="holm")[1]
    got = [holm.loc[x, y] for x, y in pairs]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert any(h > r for h, r in zip(got, [raw.loc[x, y] for x, y in pairs]))  # it did adjust


def test_wilson_matches_hand_formula_and_known_values() -> None:
    z = norm.ppf(0.975)
    for k, n in ((96, 100), (3, 17), (500, 1000)):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low, high = wilson_interval(k, n)
        assert low == pytest.approx(centre - half, rel=1e-10)
        assert high == pytest.approx(centre + half, rel=1e-10)
    # 0 of 10: the interval is [0, z^2 / (n + z^2)] (unlike Wald's degenerate [0, 0]).
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(z * z / (10 + z * z), rel=1e-10)
    assert math.isnan(wilson_interval(0, 0)[0])


def test_table_intervals_are_wilson_of_the_stored_counts(tmp_path: Path) -> None:
    clean = {"a": [True] * 17 + [False] * 3}
    run = load_runs([write_run(tmp_path / "r", Run({"a": "A"}, clean))])
    row = accuracy_table(run).iloc[0]
    assert (row.accuracy, row.n) == (0.85, 20)
    assert (row.ci_low, row.ci_high) == pytest.approx(wilson_interval(17, 20))


def test_worst_case_is_per_sample_and_not_an_average(tmp_path: Path) -> None:
    # 4 samples; each attack alone leaves 2 of 4 robust, but only sample 1 survives both.
    pgd = [True, True, False, False]
    fool = [False, True, True, False]
    noise = [True, True, True, True]  # a weak attack must not lift the worst case
    cells = [Cell("a", "pgd", "linf", 0.3, pgd), Cell("a", "deepfool", "linf", 0.3, fool),
             Cell("a", "noise", "linf", 0.3, noise)]
    run = load_runs([write_run(tmp_path / "r", Run({"a": "A"}, {"a": [True] * 4}, cells))])
    table = accuracy_table(run).set_index("row")
    assert table.loc["pgd", "accuracy"] == table.loc["deepfool", "accuracy"] == 0.5
    mean_acc = table.loc[["pgd", "deepfool", "noise"], "accuracy"].mean()
    min_acc = table.loc[["pgd", "deepfool", "noise"], "accuracy"].min()
    assert table.loc["All L∞", "accuracy"] == 0.25
    assert table.loc["All L∞", "accuracy"] < min_acc < mean_acc


def test_worst_case_groups_split_by_threat_and_epsilon(tmp_path: Path) -> None:
    cells = [Cell("a", "pgd", "linf", 0.1, [True, True, False]),
             Cell("a", "deepfool", "linf", 0.1, [False, True, True]),
             Cell("a", "pgd", "linf", 0.3, [True, False, False]),
             Cell("a", "pgd-l2", "l2", 1.5, [False, False, True])]
    run = load_runs([write_run(tmp_path / "r", Run({"a": "A"}, {"a": [True] * 3}, cells))])
    table = accuracy_table(run)
    assert list(dict.fromkeys(table.group)) == ["Clean", "L∞ attack (ε = 0.1)", "L∞ attack (ε = 0.3)",
                                                "L2 attack (ε = 1.5)"]
    # Only the two-attack group gets an All row; a one-attack group's worst case is its row.
    alls = table[table.row.str.startswith("All")]
    assert list(alls.group) == ["L∞ attack (ε = 0.1)"] and list(alls.accuracy) == [1 / 3]
    assert list(table.row) == ["Clean", "pgd", "deepfool", "All L∞", "pgd", "pgd-l2"]


def test_clean_row_is_derived_from_any_row_when_no_clean_cell(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "r", Run({"a": "A"}, {"a": [True, False, True, True]},
                                            [Cell("a", "pgd", "linf", 0.3, [False] * 4)]))
    run = load_runs([run_dir])
    derived = dataclasses.replace(run, results=run.results[run.results.attack != "clean"])
    assert accuracy_table(derived).iloc[0].accuracy == 0.75 == accuracy_table(run).iloc[0].accuracy


def test_different_sample_sets_are_refused(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", Run({"a": "A"}, {"a": [True] * 5}, samples=[1, 2, 3, 4, 5]))
    b = write_run(tmp_path / "b", Run({"b": "B"}, {"b": [True] * 5}, samples=[1, 2, 3, 4, 6]))
    with pytest.raises(SampleSetMismatch, match="different dataset samples"):
        load_runs([a, b])
    assert issubclass(SampleSetMismatch, UserInputError)  # the CLI prints it and exits 2
    c = write_run(tmp_path / "c", Run({"c": "C"}, {"c": [True] * 5}, samples=[1, 2, 3, 4, 5],
                                      dataset="fashion-mnist"))
    with pytest.raises(SampleSetMismatch, match="different datasets"):
        load_runs([a, c])
    # Within one run: a model whose attack saw other samples cannot be paired with McNemar.
    s = {"a": pd.Series([True, False], index=[1, 2]), "b": pd.Series([True, True], index=[1, 3])}
    with pytest.raises(SampleSetMismatch, match="different samples"):
        require_same_samples(s, "PGD")


def test_caption_lists_non_significant_pairs(tmp_path: Path) -> None:
    n = 200
    rng = np.random.default_rng(5)
    strong = rng.random(n) < 0.95
    weak = strong & (rng.random(n) < 0.2)
    cells = [Cell("a", "pgd", "linf", 0.3, strong), Cell("b", "pgd", "linf", 0.3, strong),
             Cell("c", "pgd", "linf", 0.3, weak),
             Cell("a", "ddn", "l2", 1.5, strong), Cell("b", "ddn", "l2", 1.5, weak),
             Cell("c", "ddn", "l2", 1.5, weak)]
    clean = {m: [True] * n for m in "abc"}
    run = load_runs([write_run(tmp_path / "r", Run({"a": "Adv-L∞", "b": "ABS", "c": "CNN"},
                                                    clean, cells))])
    text = caption(run)
    assert text.endswith("McNemar's test shows that all differences are significant (p < 0.01) "
                         "except for: Adv-L∞ and ABS under L∞ attacks, and ABS and CNN under L2 "
                         "attacks.")
    assert "based on 200 samples" in text


def test_minimal_distances_and_curve_by_hand(tmp_path: Path) -> None:
    # Samples: clean-wrong (distance irrelevant -> 0), found at 0.5/1.0/2.0, never broken.
    clean = {"a": [False, True, True, True, True]}
    d_ddn = [None, 0.5, 1.2, 2.0, None]
    d_cw = [None, 0.7, 1.0, 2.5, None]
    eps = 1.5
    cells = [Cell("a", "ddn", "l2", eps, [False, False, False, True, True], d_ddn, True),
             Cell("a", "cw", "l2", eps, [False, False, False, True, True], d_cw, True)]
    run = load_runs([write_run(tmp_path / "r", Run({"a": "A"}, clean, cells))])
    dist = minimal_distances(run.results).set_index("attack")
    assert dist.loc["all", "mean"] == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    assert dist.loc["all", "median"] == pytest.approx(1.0)
    assert dist.loc["ddn", "mean"] == pytest.approx((0.5 + 1.2 + 2.0) / 3)
    assert (dist.loc["all", "n_found"], dist.loc["all", "n_not_found"]) == (3, 1)
    curve = robust_accuracy_curve(run.results, "l2", [0.0, 0.5, 0.99, 1.0, 1.5, 2.0, 3.0])
    # robust iff closest distance > ε; the clean-wrong sample is never robust
    assert curve["a"].tolist() == pytest.approx([4 / 5, 3 / 5, 3 / 5, 2 / 5, 2 / 5, 1 / 5, 1 / 5])
    # consistent with the stored verdict at the suite's ε for the closest-over-attacks sample set
    table = accuracy_table(run).set_index("row")
    assert table.loc["All L2", "accuracy"] == pytest.approx(curve.loc[1.5, "a"])


def test_format_epsilon() -> None:
    assert format_epsilon(0.3) == "0.3"
    assert format_epsilon(8 / 255) == "8/255"
    assert format_epsilon(1.5) == "1.5"
    assert format_epsilon(0.2) == "0.2"


def test_incomplete_group_is_refused_strictly_and_intersected_leniently(tmp_path: Path) -> None:
    cells = [Cell("a", "pgd", "linf", 0.3, [T, T, F, T]),
             Cell("a", "deepfool", "linf", 0.3, [T, F, T], samples=[100, 101, 102])]
    run = load_runs([write_run(tmp_path / "r", Run({"a": "A"}, {"a": [T] * 4}, cells))])
    with pytest.raises(SampleSetMismatch, match="a, L∞ attack"):
        accuracy_table(run)
    lenient = accuracy_table(run, strict=False).set_index("row")
    assert (lenient.loc["All L∞", "n"], lenient.loc["All L∞", "accuracy"]) == (3, 1 / 3)


def test_caption_when_nothing_is_significant(tmp_path: Path) -> None:
    cells = [Cell(m, "pgd", "linf", 0.3, [T, F, T, F]) for m in "ab"]
    run = load_runs([write_run(tmp_path / "r", Run({"a": "A", "b": "B"}, {m: [T] * 4 for m in "ab"},
                                                    cells))])
    assert caption(run).endswith("McNemar's test shows no significant difference (at p < 0.01) "
                                 "between any two models.")


def test_caption_names_the_shorter_list(tmp_path: Path) -> None:
    n = 40
    idx = np.arange(n)

    def caption_for(name: str, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> str:
        cells = [Cell(m, "pgd", "linf", 0.3, v) for m, v in zip("abc", (a, b, c))]
        return caption(load_runs([write_run(tmp_path / name, Run(
            {"a": "A", "b": "B", "c": "C"}, {m: [T] * n for m in "abc"}, cells))]))

    # Exact two-sided McNemar with k discordant pairs all one way: p = 2 * 0.5**k.
    # k = 7 -> p = 0.0156 (not < 0.01); k = 14 -> p = 1.2e-4 (significant).
    a = np.ones(n, dtype=bool)
    b = idx >= 7  # wrong on 7 samples
    c = idx >= 14  # wrong on 14 samples (a superset)
    assert caption_for("one", a, b, c).endswith(
        "McNemar's test shows significant differences (p < 0.01) only for A and C under L∞ "
        "attacks; the other differences are not significant.")
    c = idx >= 30  # b-c: 23 discordant, a-c: 30 -> significant; a-b (7) is the exception
    assert caption_for("two", a, b, c).endswith(
        "McNemar's test shows that all differences are significant (p < 0.01) except for A and B "
        "under L∞ attacks.")
