"""Statistics on stored per-sample results: Wilson intervals, worst case over attacks, McNemar.

Everything here works on the frame of :func:`robustgen_bench.store.read_results` (one row per
(cell, sample)); nothing calls the runner. The unit of every statistic is a *row* of a paper table
(:class:`RowKey`): clean accuracy, one attack at one (threat, ε), or the worst case over all attacks
of a (threat, ε) group. For each row and model we build a boolean Series "sample correct",
indexed by ``sample_index``; accuracies, intervals and paired tests are computed from those.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from robustgen_bench.errors import UserInputError

#: Attack name under which the runner stores clean-accuracy rows.
CLEAN = "clean"
#: Threat order in tables (the thesis prints L∞ before L2).
THREAT_ORDER = ("linf", "l2")
THREAT_LABEL = {"linf": "L∞", "l2": "L2"}
#: Budget tolerance of the attack invariant (attacks/base.py): norm ≤ ε + 1e-6 is within budget.
NORM_TOLERANCE = 1e-6


class SampleSetMismatch(UserInputError):
    """Results being compared were computed on different samples (exit code 2)."""


@dataclass(frozen=True)
class StatsConfig:
    """The suite's ``stats`` block: McNemar at level ``alpha``, optional Holm correction."""

    test: str = "mcnemar"
    alpha: float = 0.01
    correction: str = "none"

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> StatsConfig:
        st = (manifest.get("suite") or {}).get("stats") or {}
        cfg = cls(test=str(st.get("test", "mcnemar")), alpha=float(st.get("alpha", 0.01)),
                  correction=str(st.get("correction", "none")))
        if cfg.test != "mcnemar":
            raise UserInputError(f"unsupported stats.test {cfg.test!r}; expected 'mcnemar'",
                                 key="stats.test")
        if cfg.correction not in ("none", "holm"):
            raise UserInputError(f"unsupported stats.correction {cfg.correction!r}; expected "
                                 "'holm' or 'none'", key="stats.correction")
        return cfg


@dataclass(frozen=True, order=True)
class RowKey:
    """One row of a results table.

    ``kind`` is ``clean``, ``attack`` (one attack) or ``all`` (worst case over the attacks of the
    (threat, ε) group). ``attack`` is the attack id for ``attack`` rows, else ``None``.
    """

    kind: str
    threat: str = "none"
    epsilon: float = 0.0
    attack: str | None = None

    @property
    def group(self) -> str:
        """Group header, e.g. ``L∞ attack (ε = 0.3)``; ``Clean`` for the clean row."""
        if self.kind == "clean":
            return "Clean"
        return f"{threat_label(self.threat)} attack (ε = {format_epsilon(self.epsilon)})"

    @property
    def label(self) -> str:
        """Row label: ``Clean``, the attack id, or ``All L∞`` / ``All L2``."""
        if self.kind == "clean":
            return "Clean"
        if self.kind == "all":
            return f"All {threat_label(self.threat)}"
        assert self.attack is not None
        return self.attack

    @property
    def slug(self) -> str:
        """File-name-safe identifier, e.g. ``linf-0.3_all`` or ``l2-1.5_pgd-l2``."""
        if self.kind == "clean":
            return "clean"
        tail = "all" if self.kind == "all" else str(self.attack)
        raw = f"{self.threat}-{self.epsilon:.6g}_{tail}"
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in raw)


def threat_label(threat: str) -> str:
    return THREAT_LABEL.get(threat, threat)


def format_epsilon(eps: float) -> str:
    """Short human form of a budget: ``0.3``, ``1.5``, or ``8/255`` for fractions of 255."""
    short = f"{eps:.4g}"
    if math.isclose(float(short), eps, rel_tol=0, abs_tol=1e-12):
        return short
    frac = Fraction(eps).limit_denominator(255)
    if frac.denominator == 255 and math.isclose(float(frac), eps, abs_tol=1e-9):
        return f"{frac.numerator}/255"
    return f"{eps:.6g}"


# ---------------------------------------------------------------------------------------------
# Proportions


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` at level 1 - ``alpha`` (statsmodels).

    ``(nan, nan)`` when ``n == 0``.
    """
    if n == 0:
        return (math.nan, math.nan)
    low, high = proportion_confint(int(successes), int(n), alpha=alpha, method="wilson")
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------
# Per-sample correctness per row


def _series(sub: pd.DataFrame, column: str = "adv_correct") -> pd.Series:
    """Boolean Series indexed by sample_index (one value per sample)."""
    s = sub.drop_duplicates("sample_index").set_index("sample_index")[column].astype(bool)
    return s.sort_index()


def clean_correct(df: pd.DataFrame, model: str) -> pd.Series:
    """Clean correctness of ``model`` per sample.

    From the stored ``clean`` cell where it exists; otherwise derived from any row
    (``clean_pred == label``), since every row records the clean prediction.
    """
    sub = df[df.model == model]
    clean_rows = sub[sub.attack == CLEAN]
    if len(clean_rows):
        return _series(clean_rows)
    derived = sub.assign(_clean_ok=sub.clean_pred == sub.label)
    return _series(derived, "_clean_ok")


def worst_case(per_attack: Sequence[pd.Series], *, strict: bool = True, what: str = "") -> pd.Series:
    """Per-sample worst case: a sample is robust only if it is robust to *every* attack.

    This is a logical AND per sample, never an average of accuracies. With ``strict`` the attacks
    must cover the same samples (else :class:`SampleSetMismatch`); otherwise the intersection is used.
    """
    if not per_attack:
        raise ValueError("worst_case needs at least one attack")
    index = per_attack[0].index
    for s in per_attack[1:]:
        if strict and not index.equals(s.index):
            where = f" ({what})" if what else ""
            raise SampleSetMismatch(
                f"attacks of one group{where} were run on different samples ({len(index)} vs "
                f"{len(s)}); the worst case over attacks needs the same samples for every attack. "
                "Finish the run (re-run the same command resumes it) before writing reports")
        index = index.intersection(s.index)
    out = pd.Series(True, index=index)
    for s in per_attack:
        out &= s.loc[index].astype(bool)
    return out.sort_index()


def row_keys(df: pd.DataFrame, attack_order: Sequence[str] = ()) -> list[RowKey]:
    """Rows in table order: Clean, then per (threat, ε) group its attacks and its ``All`` row.

    A group with a single attack gets no ``All`` row (it would repeat the attack's row).

    Groups are ordered L∞ then L2, ε ascending; attacks by ``attack_order`` (the suite's order),
    unknown ones alphabetically after.
    """
    rank = {a: i for i, a in enumerate(attack_order)}
    attacks = df[df.attack != CLEAN][["threat", "epsilon", "attack"]].drop_duplicates()
    keys: list[RowKey] = [RowKey("clean")]
    threats = sorted(attacks.threat.unique(),
                     key=lambda t: (THREAT_ORDER.index(t) if t in THREAT_ORDER else 99, t))
    for threat in threats:
        for eps in sorted(attacks[attacks.threat == threat].epsilon.unique()):
            names = attacks[(attacks.threat == threat) & (attacks.epsilon == eps)].attack.unique()
            names = sorted(names, key=lambda a: (rank.get(a, len(rank)), a))
            keys += [RowKey("attack", threat, float(eps), a) for a in names]
            if len(names) > 1:  # with one attack the worst case is that attack's row
                keys.append(RowKey("all", threat, float(eps)))
    return keys


def per_sample_rows(df: pd.DataFrame, models: Sequence[str] | None = None,
                    attack_order: Sequence[str] = (), *, strict: bool = True
                    ) -> dict[RowKey, dict[str, pd.Series]]:
    """For every table row, each model's boolean correctness per sample (index: sample_index).

    A model without results for an attack row is absent from that row's dict. ``all`` rows hold
    the per-sample worst case over the group's attacks the model was evaluated on.
    """
    models = list(models) if models is not None else list(dict.fromkeys(df.model))
    out: dict[RowKey, dict[str, pd.Series]] = {}
    for key in row_keys(df, attack_order):
        row: dict[str, pd.Series] = {}
        for m in models:
            if key.kind == "clean":
                if (df.model == m).any():
                    row[m] = clean_correct(df, m)
            elif key.kind == "attack":
                sub = df[(df.model == m) & (df.attack == key.attack) & (df.threat == key.threat)
                         & (df.epsilon == key.epsilon)]
                if len(sub):
                    row[m] = _series(sub)
            else:
                members = [out[k][m] for k in out
                           if k.kind == "attack" and k.threat == key.threat
                           and k.epsilon == key.epsilon and m in out[k]]
                if members:
                    row[m] = worst_case(members, strict=strict, what=f"{m}, {key.group}")
        out[key] = row
    return out


def accuracy_frame(rows: Mapping[RowKey, Mapping[str, pd.Series]], alpha: float = 0.05
                   ) -> pd.DataFrame:
    """Long frame: one line per (row, model) with correct, n, accuracy (fraction) and Wilson CI."""
    records = []
    for key, per_model in rows.items():
        for model, s in per_model.items():
            k, n = int(s.sum()), int(len(s))
            low, high = wilson_interval(k, n, alpha)
            records.append({"key": key, "group": key.group, "row": key.label, "model": model,
                            "correct": k, "n": n, "accuracy": k / n if n else math.nan,
                            "ci_low": low, "ci_high": high})
    return pd.DataFrame.from_records(
        records, columns=["key", "group", "row", "model", "correct", "n", "accuracy", "ci_low",
                          "ci_high"])


# ---------------------------------------------------------------------------------------------
# McNemar


def mcnemar_pvalue(a: np.ndarray | pd.Series, b: np.ndarray | pd.Series) -> float:
    """Exact McNemar p-value for two paired boolean outcome vectors (same samples, same order).

    Only the discordant pairs matter: b01 = a right & b wrong, b10 = a wrong & b right; the exact
    test is a two-sided binomial test of b01 ~ Bin(b01 + b10, 1/2) (p = 1 when no pair disagrees).
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise SampleSetMismatch(f"paired outcomes differ in length ({a.shape} vs {b.shape})")
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


def require_same_samples(per_model: Mapping[str, pd.Series], what: str = "") -> None:
    """Refuse (:class:`SampleSetMismatch`) unless every model was evaluated on the same samples."""
    items = list(per_model.items())
    for (m0, s0), (m1, s1) in itertools.pairwise(items):
        if not s0.index.equals(s1.index):
            only0 = len(s0.index.difference(s1.index))
            only1 = len(s1.index.difference(s0.index))
            where = f" in row {what!r}" if what else ""
            raise SampleSetMismatch(
                f"cannot compare {m0!r} and {m1!r}{where}: they were evaluated on different samples "
                f"({len(s0)} vs {len(s1)} samples; {only0} only in {m0!r}, {only1} only in {m1!r}). "
                "Compare runs of the same suite dataset (name, split, n, seed), and finish an "
                "interrupted run first (re-running the same command resumes it).")


def mcnemar_matrix(per_model: Mapping[str, pd.Series], *, correction: str = "none",
                   what: str = "") -> pd.DataFrame:
    """Symmetric matrix of exact McNemar p-values between every pair of models (diagonal NaN).

    ``correction='holm'`` replaces the p-values by Holm-adjusted ones over the pairs of this row
    (statsmodels ``multipletests``), so comparing them with α controls the row's family-wise error.
    """
    require_same_samples(per_model, what)
    models = list(per_model)
    mat = pd.DataFrame(np.nan, index=models, columns=models, dtype=float)
    pairs = list(itertools.combinations(models, 2))
    pvals = [mcnemar_pvalue(per_model[a].to_numpy(), per_model[b].to_numpy()) for a, b in pairs]
    if correction == "holm" and pvals:
        pvals = list(multipletests(pvals, method="holm")[1])
    elif correction not in ("none", "holm"):
        raise ValueError(f"unknown correction {correction!r}")
    for (a, b), p in zip(pairs, pvals):
        mat.loc[a, b] = mat.loc[b, a] = float(p)
    return mat


def mcnemar_matrices(rows: Mapping[RowKey, Mapping[str, pd.Series]], *, correction: str = "none"
                     ) -> dict[RowKey, pd.DataFrame]:
    """One p-value matrix per table row that has at least two models."""
    return {k: mcnemar_matrix(r, correction=correction, what=f"{k.group}: {k.label}")
            for k, r in rows.items() if len(r) >= 2}


def worst_case_keys(keys: Sequence[RowKey]) -> list[RowKey]:
    """The worst-case row of each (threat, ε) group: its ``All`` row, or its only attack's row."""
    groups_with_all = {(k.threat, k.epsilon) for k in keys if k.kind == "all"}
    return [k for k in keys if k.kind == "all"
            or (k.kind == "attack" and (k.threat, k.epsilon) not in groups_with_all)]


def significance_caption(matrices: Mapping[RowKey, pd.DataFrame], names: Mapping[str, str],
                         *, alpha: float = 0.01, correction: str = "none") -> str:
    """The thesis-style sentence on the worst-case rows (``All``, or a group's only attack).

    e.g. "McNemar's test shows that all differences are significant (p < 0.01) except for:
    Adv-L∞ and ABS under L2 attacks, and ABS and E-ABS under L∞ attacks." When most pairs are not
    significant, the significant ones are listed instead ("... only for: ...").
    """
    all_rows = worst_case_keys(list(matrices))
    if not all_rows:
        all_rows = [k for k in matrices if k.kind == "clean"]
    if not all_rows:
        return "McNemar's test: fewer than two models, nothing to compare."
    eps_per_threat: dict[str, set[float]] = {}
    for k in all_rows:
        eps_per_threat.setdefault(k.threat, set()).add(k.epsilon)
    exceptions: list[str] = []
    significant: list[str] = []
    for k in all_rows:
        mat = matrices[k]
        if k.kind == "clean":
            where = "on clean data"
        else:
            where = f"under {threat_label(k.threat)} attacks"
            if len(eps_per_threat[k.threat]) > 1:
                where += f" (ε = {format_epsilon(k.epsilon)})"
        for a, b in itertools.combinations(mat.index, 2):
            pair = f"{names.get(a, a)} and {names.get(b, b)} {where}"
            (significant if mat.loc[a, b] < alpha else exceptions).append(pair)
    level = f"p < {alpha:g}" + (", Holm-corrected" if correction == "holm" else "")
    head = f"McNemar's test shows that all differences are significant ({level})"
    if not exceptions:
        return head + "."
    if not significant:
        return f"McNemar's test shows no significant difference (at {level}) between any two models."
    if len(significant) < len(exceptions):  # name the shorter list
        return (f"McNemar's test shows significant differences ({level}) only for"
                f"{_enumerate(significant)}; the other differences are not significant.")
    return f"{head} except for{_enumerate(exceptions)}."


def _enumerate(items: Sequence[str]) -> str:
    """' A' or ': A, B, and C' (the thesis's caption punctuation)."""
    if len(items) == 1:
        return f" {items[0]}"
    return f": {', '.join(items[:-1])}, and {items[-1]}"


# ---------------------------------------------------------------------------------------------
# Minimal distances (minimal-norm attacks)


def closest_distances(df: pd.DataFrame, model: str, threat: str,
                      attacks: Iterable[str] | None = None) -> pd.Series:
    """Per-sample distance of the closest adversarial example over the minimal-norm attacks.

    Float Series indexed by sample_index: 0 where the clean input is already misclassified,
    ``inf`` where no attack found an adversarial example. Taken over all stored ε of each attack
    (a minimal-norm attack's distance is the smallest it found).
    """
    sub = df[(df.model == model) & (df.threat == threat) & df.minimal_norm & (df.attack != CLEAN)]
    if attacks is not None:
        sub = sub[sub.attack.isin(list(attacks))]
    if sub.empty:
        return pd.Series(dtype=float)
    d = sub.distance.astype(float).fillna(np.inf)
    d = d.where(sub.clean_pred == sub.label, 0.0)
    return d.groupby(sub.sample_index).min().sort_index()


def minimal_distances(df: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and median closest-adversarial distance per model, attack and threat (Table 2.6 style).

    One line per (model, threat, attack) plus ``attack='all'`` (closest over the threat's
    minimal-norm attacks). Statistics are over clean-correct samples where an adversarial example
    was found (``n_found``); ``n_not_found`` counts clean-correct samples no attack broke, which a
    mean over found samples alone would hide.
    """
    models = list(models) if models is not None else list(dict.fromkeys(df.model))
    mn = df[df.minimal_norm & (df.attack != CLEAN)]
    records = []
    for m in models:
        for threat in [t for t in THREAT_ORDER if t in set(mn.threat)]:
            names = list(dict.fromkeys(mn[(mn.model == m) & (mn.threat == threat)].attack))
            for attack in names + (["all"] if names else []):
                d = closest_distances(df, m, threat, None if attack == "all" else [attack])
                ok = d[d > 0]  # clean-correct samples
                found = ok[np.isfinite(ok)]
                records.append({
                    "model": m, "threat": threat, "attack": attack, "n": int(len(d)),
                    "n_found": int(len(found)), "n_not_found": int(len(ok) - len(found)),
                    "mean": float(found.mean()) if len(found) else math.nan,
                    "median": float(found.median()) if len(found) else math.nan})
    return pd.DataFrame.from_records(
        records, columns=["model", "threat", "attack", "n", "n_found", "n_not_found", "mean",
                          "median"])


def robust_accuracy_curve(df: pd.DataFrame, threat: str, epsilons: Sequence[float],
                          models: Sequence[str] | None = None, *,
                          tolerance: float = NORM_TOLERANCE) -> pd.DataFrame:
    """Robust accuracy at each ε from the closest adversarial distances (index ε, columns models).

    A sample is robust at ε iff its closest adversarial example is farther than ε + ``tolerance``
    (the attacks' own rule: a perturbation with norm ≤ ε + 1e-6 is within the budget), so the
    curve at a suite's ε agrees with the stored verdicts of its minimal-norm attacks.
    """
    models = list(models) if models is not None else list(dict.fromkeys(df.model))
    eps = np.asarray(list(epsilons), dtype=float)
    cols = {}
    for m in models:
        d = closest_distances(df, m, threat)
        if len(d):
            cols[m] = [(d.to_numpy() > e + tolerance).mean() for e in eps]
    return pd.DataFrame(cols, index=pd.Index(eps, name="epsilon"))
