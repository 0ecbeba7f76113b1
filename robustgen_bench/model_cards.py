"""RobustBench model cards out: ``rgbench export RUN_DIR --format robustbench --out DIR``.

Writes, per model of the run, ``DIR/<dataset>/<Linf|L2>/<key>.json`` with exactly RobustBench's
model-info fields, in its order (``model_info/<dataset>/<threat_model>/<name>.json`` upstream)::

    link, name, authors, additional_data, number_forward_passes, dataset, venue, architecture,
    eps, clean_acc, reported, autoattack_acc, unreliable [, external]

- Accuracies are percent strings with two decimals (``"59.53"``), ``eps`` a string (``"8/255"``,
  ``"0.3"``), as RobustBench stores them.
- ``link, authors, venue, architecture, additional_data`` come from the zoo entry's optional keys
  of the same names; ``name`` is the entry's name; ``reported`` its ``claimed.robust_accuracy``
  (a fraction), else empty; ``number_forward_passes`` its ``number_forward_passes`` key, else 1.
- ``autoattack_acc`` is filled only when the run holds an AutoAttack cell (library
  ``autoattack``) at the exported (threat, ε); otherwise it is ``""``.
- ``external`` is added when another attack of the run at that (threat, ε) is stronger: the
  per-sample worst case over all of the run's attacks there (with no AutoAttack cell: over the
  attacks there are).
- ``unreliable`` is true when attack-failure checks of the run flag the model: a file
  ``RUN_DIR/checks.json`` of the form ``{"<model id>": {"unreliable": true, ...}}``; false when
  the file is absent.
- The file name ``<key>`` is the RobustBench name for ``robustbench`` entries, else the entry id
  with ``/`` replaced by ``_``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from robustgen_bench.errors import UserInputError
from robustgen_bench.stats import CLEAN, format_epsilon, per_sample_rows

#: RobustBench's model-info keys, in its order.
CARD_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
               "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc",
               "unreliable")
THREAT_NAMES = {"linf": "Linf", "l2": "L2"}
CHECKS_FILE = "checks.json"


def percent(fraction: float) -> str:
    """A fraction as RobustBench stores accuracies: ``0.5953`` -> ``"59.53"``."""
    return f"{100.0 * fraction:.2f}"


def _entry(model_id: str):
    from robustgen_bench.zoo import get_entry

    try:
        return get_entry(model_id)
    except UserInputError:
        return None  # a model of the run no longer in this zoo: cards without its metadata


def _file_key(model_id: str, entry: Any) -> str:
    if entry is not None and entry.family == "robustbench" and entry.config.get("name"):
        return str(entry.config["name"])
    return model_id.replace("/", "_")


def _unreliable(run_dir: Path, model_id: str) -> bool:
    f = run_dir / CHECKS_FILE
    if not f.is_file():
        return False
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserInputError(f"invalid JSON: {e}", file=f) from None
    return bool((data.get(model_id) or {}).get("unreliable", False))


def _budget(runs, libraries: dict[str, str], threat: str | None, epsilon: float | None
            ) -> tuple[str, float]:
    df = runs.results[runs.results.attack != CLEAN]
    cells = df[["attack", "threat", "epsilon"]].drop_duplicates()
    if threat is not None:
        cells = cells[cells.threat == threat]
    if epsilon is not None:
        cells = cells[(cells.epsilon - epsilon).abs() <= 1e-9]
    if not len(cells):
        raise UserInputError(f"the run holds no attack cell at threat {threat or 'any'}, ε "
                             f"{'any' if epsilon is None else format_epsilon(epsilon)}",
                             key="--epsilon")
    aa = cells[cells.attack.map(lambda a: libraries.get(a) == "autoattack")]
    pick = aa if len(aa) else cells
    budgets = sorted({(t, float(e)) for t, e in zip(pick.threat, pick.epsilon)})
    if len(budgets) > 1:
        shown = ", ".join(f"{t} {format_epsilon(e)}" for t, e in budgets)
        raise UserInputError(f"the run has several budgets ({shown}); choose one with --threat "
                             "and --epsilon", key="--epsilon")
    return budgets[0]


def model_cards(run_dir: str | Path, *, threat: str | None = None, epsilon: float | None = None
                ) -> dict[str, dict[str, Any]]:
    """``{relative path: card}`` for every model of the run at one (threat, ε).

    Without ``threat``/``epsilon`` the budget is that of the run's AutoAttack cells (or of its
    attacks, when it has no AutoAttack cell); several budgets need a choice.
    """
    from robustgen_bench.report.runs import load_runs

    run_dir = Path(run_dir)
    runs = load_runs([run_dir])
    attacks = (runs.manifests[0].get("suite") or {}).get("attacks") or []
    libraries = {str(a.get("id")): str(a.get("library", "")).lower() for a in attacks}
    threat, eps = _budget(runs, libraries, threat, epsilon)
    rows = per_sample_rows(runs.results, runs.models, runs.attack_order, strict=False)
    dataset = str(runs.dataset.get("name") or "")
    cards: dict[str, dict[str, Any]] = {}
    for m in runs.models:
        entry = _entry(m)
        meta = dict(getattr(entry, "meta", {}) or {})
        claimed = meta.get("claimed") if isinstance(meta.get("claimed"), dict) else {}
        clean = aa = None
        others: list = []
        for key, per_model in rows.items():
            if m not in per_model:
                continue
            if key.kind == "clean":
                clean = per_model[m]
            elif key.kind == "attack" and key.threat == threat and math.isclose(key.epsilon, eps,
                                                                                abs_tol=1e-9):
                if libraries.get(str(key.attack)) == "autoattack":
                    aa = per_model[m] if aa is None else (aa & per_model[m]).dropna()
                else:
                    others.append(per_model[m])
        if clean is None and aa is None and not others:
            continue
        card: dict[str, Any] = {
            "link": str(meta.get("link", "")),
            "name": entry.name if entry is not None else runs.display(m),
            "authors": str(meta.get("authors", "")),
            "additional_data": bool(meta.get("additional_data", False)),
            "number_forward_passes": int(meta.get("number_forward_passes", 1)),
            "dataset": dataset,
            "venue": str(meta.get("venue", "")),
            "architecture": str(meta.get("architecture", "")),
            "eps": format_epsilon(eps),
            "clean_acc": percent(float(clean.mean())) if clean is not None else "",
            "reported": (percent(float(claimed["robust_accuracy"]))
                         if isinstance(claimed.get("robust_accuracy"), (int, float)) else ""),
            "autoattack_acc": percent(float(aa.mean())) if aa is not None else "",
            "unreliable": _unreliable(run_dir, m),
        }
        if others:
            worst = others[0]
            for s in others[1:] + ([aa] if aa is not None else []):
                idx = worst.index.intersection(s.index)
                worst = worst.loc[idx] & s.loc[idx]
            if aa is None or float(worst.mean()) < float(aa.mean()):
                card["external"] = percent(float(worst.mean()))
        path = f"{dataset}/{THREAT_NAMES.get(threat, threat)}/{_file_key(m, entry)}.json"
        cards[path] = card
    return cards


def write_model_cards(run_dir: str | Path, out_dir: str | Path, *, threat: str | None = None,
                      epsilon: float | None = None) -> list[Path]:
    """Write :func:`model_cards` under ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    written = []
    for rel, card in model_cards(run_dir, threat=threat, epsilon=epsilon).items():
        p = out_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(card, indent=2) + "\n")
        written.append(p)
    return written


def export_command(run_dir: Path, out: Path | None, threat: str | None, epsilon: str | None,
                   console: Any = None) -> list[Path]:
    """``rgbench export --format robustbench``: parse the options, write, report the files."""
    from fractions import Fraction

    if out is None:
        raise UserInputError("expected --out DIR (a folder for the model-card JSON files)", key="--out")
    if threat is not None and threat not in THREAT_NAMES:
        raise UserInputError(f"expected linf or l2, got {threat!r}", key="--threat")
    eps = None
    if epsilon is not None:
        try:
            eps = float(Fraction(epsilon.strip()))
        except (ValueError, ZeroDivisionError):
            raise UserInputError(f"expected a number or a fraction like 8/255, got {epsilon!r}",
                                 key="--epsilon") from None
    paths = write_model_cards(run_dir, out, threat=threat, epsilon=eps)
    if console is not None:
        for p in paths:
            console.print(f"wrote {p}", highlight=False)
    return paths
