"""Checks computed from the stored rows alone (no model is run): monotonicity in epsilon,
black-box versus white-box per sample, and the attack libraries' silent failures.

Inputs are the run's result frame (:func:`robustgen_bench.store.read_results` columns) and the
suite's attack specs by id. "Broken at ε" by an attack means: for a bounded attack, its cell at
exactly ε holds a verified adversarial; for a minimal-norm attack, its smallest verified
distance over its cells is ≤ ε. Only clean-correct samples are compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.checks.result import CheckResult
from robustgen_bench.checks.spec import ChecksSpec
from robustgen_bench.stats import CLEAN, clean_correct, format_epsilon, mcnemar_pvalue

#: Gradient-free or score-based attacks (the black-box side of the comparison).
BLACK_BOX = frozenset({("foolbox", "BoundaryAttack"), ("foolbox", "GaussianNoise"),
                       ("foolbox", "LinfESPGD"), ("foolbox", "L2ESPGD"),
                       ("torchattacks", "Square")})
EPS_TOL = 1e-6


def is_black_box(spec: AttackSpec) -> bool:
    if (spec.library, spec.attack) in BLACK_BOX:
        return True
    if spec.library == "autoattack":
        attacks = spec.params.get("attacks")
        return bool(attacks) and set(attacks) <= {"square"}
    return False


def is_minimal_norm(spec: AttackSpec) -> bool:
    from robustgen_bench.attacks import get_attack_class

    return bool(getattr(get_attack_class(spec.library, spec.attack), "MINIMAL_NORM", False))


def _cells(df: pd.DataFrame, model: str, threat: str) -> pd.DataFrame:
    return df[(df.model == model) & (df.threat == threat) & (df.attack != CLEAN)]


def _correct_index(df: pd.DataFrame, model: str) -> pd.Index:
    cc = clean_correct(df, model)
    return cc.index[cc.values]


def broken_at(df: pd.DataFrame, model: str, attack_id: str, eps: float, minimal: bool,
              samples: pd.Index) -> pd.Series | None:
    """Per sample of ``samples``: broken by ``attack_id`` at ``eps`` (None: not evaluated there)."""
    sub = df[(df.model == model) & (df.attack == attack_id)]
    if not len(sub):
        return None
    if minimal:
        d = sub.groupby("sample_index").distance.min()
        found = d.reindex(samples)
        return pd.Series(np.nan_to_num(found.values, nan=math.inf) <= eps + EPS_TOL, index=samples)
    cell = sub[np.isclose(sub.epsilon.astype(float), eps, rtol=0, atol=1e-9)]
    if not len(cell):
        return None
    s = cell.drop_duplicates("sample_index").set_index("sample_index").adv_correct
    s = s.reindex(samples)
    if s.isna().any():
        return None
    return ~s.astype(bool)


def _epsilons(cells: pd.DataFrame) -> list[float]:
    return sorted({float(e) for e in cells.epsilon})


def _cell_keys(cells: pd.DataFrame) -> tuple[str, ...]:
    return tuple(sorted(set(cells.cell_key)))


def monotone(df: pd.DataFrame, specs: Mapping[str, AttackSpec], model: str, threat: str,
             cs: ChecksSpec) -> CheckResult:
    """Samples robust (to every attack) at a larger ε but broken at a smaller one."""
    cells = _cells(df, model, threat)
    eps = _epsilons(cells)
    keys = _cell_keys(cells)
    if len(eps) < 2:
        return CheckResult("monotone", model, threat, "skip",
                           "one budget only: nothing to compare", {"epsilons": eps}, keys)
    samples = _correct_index(df, model)
    attacks = list(dict.fromkeys(cells.attack))
    broken: dict[float, pd.Series] = {}
    for e in eps:
        parts = [b for a in attacks if (b := broken_at(df, model, a, e, is_minimal_norm(specs[a]),
                                                       samples)) is not None]
        broken[e] = pd.concat(parts, axis=1).any(axis=1) if parts else pd.Series(False, samples)
    violating: set[int] = set()
    examples: list[str] = []
    for i, lo in enumerate(eps):
        for hi in eps[i + 1:]:
            bad = broken[lo] & ~broken[hi]
            for s in bad.index[bad.values]:
                if int(s) not in violating and len(examples) < 5:
                    examples.append(f"sample {int(s)}: broken at ε={format_epsilon(lo)}, "
                                    f"robust at ε={format_epsilon(hi)}")
                violating.add(int(s))
    n = len(violating)
    status = "warn" if n > cs.threshold("monotone_violations") else "pass"
    return CheckResult("monotone", model, threat, status,
                       f"{n} of {len(samples)} samples robust at a larger ε but broken at a smaller one",
                       {"violations": n, "samples": len(samples), "epsilons": eps,
                        "examples": examples}, keys)


def paired(name: str, model: str, threat: str, other: pd.Series, white: pd.Series, alpha: float,
           eps: float) -> dict[str, object]:
    """Discordant counts and the exact McNemar p of ``other`` (black-box/transfer) vs white-box
    broken-flags on the same samples."""
    b = int((other & ~white).sum())
    c = int((white & ~other).sum())
    p = mcnemar_pvalue(~other.values, ~white.values) if len(other) else 1.0
    return {"epsilon": eps, "only_" + name: b, "only_whitebox": c, "p": p, "n": int(len(other)),
            "significant": bool(b > c and p < alpha)}


def min_probe_samples(alpha: float) -> int:
    """The fewest samples on which an exact two-sided McNemar test can reach p < ``alpha``
    (all of them discordant one way: p = 2·0.5^n); 8 at alpha 0.01."""
    return max(1, math.floor(1 - math.log2(alpha)) + 1)


def underpowered(status: str, samples: int, alpha: float,
                 more: str = "checks.subsample") -> tuple[str, str]:
    """A paired comparison on too few samples cannot warn, so it must not read as a pass: its
    status becomes ``skip`` with the reason and ``more`` (the setting that buys samples); the
    figure still shows what it measured."""
    need = min_probe_samples(alpha)
    if samples >= need or status != "pass":
        return status, ""
    return "skip", (f"underpowered: on {samples} samples McNemar cannot reach p < {alpha:g} "
                    f"(needs >= {need}, {more}); ")


def blackbox(df: pd.DataFrame, specs: Mapping[str, AttackSpec], model: str, threat: str,
             cs: ChecksSpec) -> CheckResult:
    """Samples broken by a black-box attack and by no white-box attack at the same ε."""
    cells = _cells(df, model, threat)
    attacks = list(dict.fromkeys(cells.attack))
    bb = [a for a in attacks if is_black_box(specs[a])]
    wb = [a for a in attacks if not is_black_box(specs[a])]
    keys = _cell_keys(cells)
    if not bb or not wb:
        return CheckResult("blackbox", model, threat, "skip",
                           f"no {'black-box' if not bb else 'white-box'} attack for this threat",
                           {}, keys)
    samples = _correct_index(df, model)
    per_eps = []
    for e in _epsilons(cells):
        def side(ids: list[str]) -> pd.Series | None:
            parts = [b for a in ids if (b := broken_at(df, model, a, e, is_minimal_norm(specs[a]),
                                                       samples)) is not None]
            return pd.concat(parts, axis=1).any(axis=1) if parts else None
        w, o = side(wb), side(bb)
        if w is None or o is None:
            continue
        per_eps.append(paired("blackbox", model, threat, o, w, cs.alpha, e))
    if not per_eps:
        return CheckResult("blackbox", model, threat, "skip",
                           "no budget evaluated by both black-box and white-box attacks", {}, keys)
    worst_row = max(per_eps, key=lambda r: (r["significant"], r["only_blackbox"], -r["p"]))
    status = "warn" if any(r["significant"] for r in per_eps) else "pass"
    status, note = underpowered(status, max(r["n"] for r in per_eps), cs.alpha,
                                "dataset.n")
    figure = note + (f"{worst_row['only_blackbox']} of {worst_row['n']} samples broken only by black-box vs "
              f"{worst_row['only_whitebox']} only by white-box at ε={format_epsilon(worst_row['epsilon'])} "
              f"(McNemar p={worst_row['p']:.3g})")
    return CheckResult("blackbox", model, threat, status, figure,
                       {"per_epsilon": per_eps, "blackbox": bb, "whitebox": wb}, keys)


def silent(df: pd.DataFrame, specs: Mapping[str, AttackSpec], model: str, threat: str,
           counters: Mapping[str, Mapping[str, int]], cs: ChecksSpec) -> CheckResult:
    """Per cell: library flags predict rejected, budget violations, minimal-norm results equal to
    the input. Warns on any violation, or when flags rejected plus unperturbed results of
    white-box minimal-norm attacks (DDN, CW, DeepFool search every norm, so returning the input
    means the optimisation failed) exceed the threshold fraction of attacked samples; a
    black-box noise or boundary search that finds nothing is reported, not counted."""
    cells = _cells(df, model, threat)
    keys = _cell_keys(cells)
    if not len(cells):
        return CheckResult("silent", model, threat, "skip", "no attack cells", {}, keys)
    per_cell = []
    tot = {"attacked": 0, "violations": 0, "flagged_rejected": 0, "unperturbed": 0}
    counted = 0
    missing = 0
    for (attack, eps, key), c in cells.groupby(["attack", "epsilon", "cell_key"], sort=False):
        attacked = int((c.clean_pred == c.label).sum())
        bb = attack in specs and is_black_box(specs[attack])
        row = {"attack": attack, "epsilon": float(eps), "attacked": attacked, "black_box": bb,
               "violations": int(c.violation.notna().sum())}
        if key in counters:
            row.update({k: int(counters[key][k]) for k in ("flagged_rejected", "unperturbed")})
            counted += row["flagged_rejected"] + (0 if bb else row["unperturbed"])
        else:
            missing += 1
            row.update({"flagged_rejected": None, "unperturbed": None})
        per_cell.append(row)
        for k in tot:
            tot[k] += int(row[k] or 0)
    frac = counted / max(tot["attacked"], 1)
    status = "warn" if tot["violations"] or frac > cs.threshold("silent_failures") + 1e-12 else "pass"
    unmoved = ", ".join(f"{r['attack']} {r['unperturbed']}" for r in per_cell if r["unperturbed"])
    figure = (f"{tot['flagged_rejected']} library successes rejected by predict, "
              f"{tot['unperturbed']} unperturbed minimal-norm results"
              + (f" ({unmoved})" if unmoved else "") + f", {tot['violations']} budget "
              f"violations over {tot['attacked']} attacked samples")
    if missing:
        figure += f" ({missing} cells without counters: run predates them)"
    return CheckResult("silent", model, threat, status, figure,
                       {"cells": per_cell, "fraction": frac, **tot}, keys)


def draw_disagreement(df: pd.DataFrame, draws: pd.DataFrame, model: str) -> dict[str, float]:
    """Among the model's stored attack rows with several draws: the fraction whose draws disagree."""
    keys = set(df[(df.model == model) & (df.attack != CLEAN)].cell_key)
    sub = draws[draws.cell_key.isin(keys)]
    multi = [d for d in sub.draws if len(d) > 1]
    split = sum(1 for d in multi if len(set(d)) > 1)
    return {"rows": len(multi), "disagreeing": split,
            "fraction": split / len(multi) if multi else 0.0}
