"""The Checks section of terminal summaries, boards and captions (from stored results only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
from rich.markup import escape
from rich.table import Table

from robustgen_bench.checks.result import BAD, CheckResult
from robustgen_bench.checks.spec import CHECK_NAMES

COLUMNS = ["model", "threat", "check", "status", "figure"]
_THREAT = {"all": "all", "linf": "L∞", "l2": "L2"}
_STYLE = {"pass": "green", "skip": "dim", "warn": "yellow", "fail": "bold red", "error": "red"}
Display = Callable[[str], str]


def ordered(results: Sequence[CheckResult], models: Sequence[str] = ()) -> list[CheckResult]:
    """Results by model (``models`` order first), threat (all, L∞, L2), then check order."""
    rank = {m: i for i, m in enumerate(models)}
    threats = list(_THREAT)
    return sorted(results, key=lambda r: (rank.get(r.model, len(rank)), r.model,
                                          threats.index(r.threat) if r.threat in threats else 9,
                                          CHECK_NAMES.index(r.name) if r.name in CHECK_NAMES else 99))


def checks_frame(results: Sequence[CheckResult], display: Display = str,
                 models: Sequence[str] = ()) -> pd.DataFrame:
    rows = [[display(r.model), _THREAT.get(r.threat, r.threat), r.name, r.status, r.figure]
            for r in ordered(results, models)]
    return pd.DataFrame(rows, columns=COLUMNS)


def checks_markdown(results: Sequence[CheckResult], display: Display = str,
                    models: Sequence[str] = ()) -> str:
    """A Markdown table, one line per (model, threat, check)."""
    df = checks_frame(results, display, models)
    out = ["| Model | Threat | Check | Verdict | Figure |", "|:---|:---|:---|:---|:---|"]
    for r in df.itertuples(index=False):
        verdict = f"**{r.status}**" if r.status in BAD else r.status
        out.append("| " + " | ".join(str(v).replace("|", r"\|") for v in
                                     (r.model, r.threat, r.check, verdict, r.figure)) + " |")
    return "\n".join(out) + "\n"


def checks_latex(results: Sequence[CheckResult], display: Display = str,
                 models: Sequence[str] = ()) -> str:
    """A booktabs fragment: model, threat, check, verdict (figures stay in the Markdown board)."""
    from robustgen_bench.report.render import _latex_symbols

    df = checks_frame(results, display, models)[["model", "threat", "check", "status"]]
    df.columns = ["Model", "Threat", "Check", "Verdict"]
    styler = df.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    return _latex_symbols(styler.to_latex(hrules=True, column_format="llll"))


def checks_rich(results: Sequence[CheckResult], display: Display = str,
                models: Sequence[str] = (), title: str | None = "Attack-failure checks") -> Table:
    t = Table(title=title)
    for c in ("Model", "Threat", "Check", "Verdict", "Figure"):
        t.add_column(c, overflow="fold")
    last = None
    for r in checks_frame(results, display, models).itertuples(index=False):
        if last is not None and r.model != last:
            t.add_section()
        last = r.model
        t.add_row(escape(r.model), r.threat, r.check,
                  f"[{_STYLE.get(r.status, '')}]{r.status}[/]", escape(r.figure))
    return t


def flagged_models(results: Sequence[CheckResult], models: Sequence[str] = ()) -> list[str]:
    """Models (in order) with at least one warn / fail / error."""
    bad = {r.model for r in results if r.status in BAD}
    return [m for m in dict.fromkeys([*models, *(r.model for r in ordered(results, models))])
            if m in bad]


def _join(items: Sequence[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def caption_sentence(results: Sequence[CheckResult], display: Display = str,
                     models: Sequence[str] = ()) -> str:
    """The caption's sentence on the checks ("" when no check was run)."""
    if not results:
        return ""
    flagged = flagged_models(results, models)
    if not flagged:
        skipped = sum(r.status == "skip" for r in results)
        if not skipped:
            return "Every attack-failure check passed."
        # a skipped check (no attack to compare with, or too few probe samples) found nothing
        # because it did not look: say so instead of calling it passed
        return (f"No attack-failure check warned; {skipped} of {len(results)} did not apply or "
                "had too few samples (see the checks table).")
    parts = []
    for m in flagged:
        names = sorted({r.name for r in results if r.model == m and r.status in BAD},
                       key=lambda n: CHECK_NAMES.index(n) if n in CHECK_NAMES else 99)
        parts.append(f"{display(m)} ({', '.join(names)})")
    return (f"Attack-failure checks raised a warning for the evaluation of {_join(parts)}; "
            "their robust accuracy may be overestimated.")
