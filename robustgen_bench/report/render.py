"""Render the long accuracy frame (tables.py) as terminal, Markdown, LaTeX, CSV or HTML.

All formats come from the same frame; accuracies stay fractions until :func:`format_cell` turns
them into percentages here. The paper layout: columns = models, the Clean row, then per group a
header row (e.g. ``L∞ attack (ε = 0.3)``) followed by its attack rows and its ``All`` row.
"""

from __future__ import annotations

import html
import io
import math
import re

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from robustgen_bench.console import add_id_column
from robustgen_bench.errors import UserInputError
from robustgen_bench.report.tables import CSV_COLUMNS
from robustgen_bench.stats import wilson_interval

FORMATS = ("md", "tex", "csv", "html", "term")
MISSING = "-"


class FormatError(UserInputError):
    """An unknown output format (exit code 2)."""


def format_cell(accuracy: float, ci_low: float, ci_high: float, *, ci: bool = True,
                digits: int = 1) -> str:
    """``99.5% [98.8, 99.8]`` (percent, ``digits`` decimals); :data:`MISSING` for a missing value."""
    if accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy)):
        return MISSING
    text = f"{100 * accuracy:.{digits}f}%"
    if ci and not math.isnan(ci_low):
        text += f" [{100 * ci_low:.{digits}f}, {100 * ci_high:.{digits}f}]"
    return text


def format_rate(successes: int, n: int, *, digits: int = 1) -> str:
    """``successes / n`` as :func:`format_cell` writes it, with its Wilson 95 % interval.

    For scripts that count outcomes themselves (the ``benchmarks/``); :data:`MISSING` when n = 0.
    """
    if n == 0:
        return MISSING
    return format_cell(successes / n, *wilson_interval(successes, n), digits=digits)


def display_frame(table: pd.DataFrame, *, ci: bool = True) -> tuple[pd.DataFrame, list[int]]:
    """Strings in paper layout and the positions of the group header rows.

    Returns a frame with a first column ``""`` (row labels) and one column per model (in the
    table's model order); header rows have empty model cells.
    """
    models = list(dict.fromkeys(table.model))
    cells = {(g, r, m): format_cell(a, lo, hi, ci=ci)
             for g, r, m, a, lo, hi in table[["group", "row", "model", "accuracy", "ci_low",
                                              "ci_high"]].itertuples(index=False)}
    lines: list[list[str]] = []
    headers: list[int] = []
    last_group = None
    for g, r in table[["group", "row"]].drop_duplicates().itertuples(index=False):
        if g != last_group and g != "Clean":
            headers.append(len(lines))
            lines.append([g] + [""] * len(models))
        last_group = g
        lines.append([r] + [cells.get((g, r, m), MISSING) for m in models])
    return pd.DataFrame(lines, columns=[""] + models), headers


def to_markdown(table: pd.DataFrame, *, ci: bool = True, caption: str | None = None) -> str:
    """GitHub Markdown table; group headers in bold; optional caption paragraph after it."""
    disp, headers = display_frame(table, ci=ci)

    def cell(text: str) -> str:
        return text.replace("|", r"\|")

    out = ["| " + " | ".join(cell(c) for c in disp.columns) + " |",
           "|" + "|".join([":---"] + ["---:"] * (len(disp.columns) - 1)) + "|"]
    for i, line in enumerate(disp.itertuples(index=False)):
        values = list(line)
        if i in headers:
            values[0] = f"**{values[0]}**"
        out.append("| " + " | ".join(cell(v) for v in values) + " |")
    text = "\n".join(out) + "\n"
    if caption:
        text += "\n" + caption + "\n"
    return text


_LATEX_UNICODE = [("L∞", r"$L_\infty$"), ("∞", r"$\infty$"), ("ε", r"$\epsilon$"), ("–", "--")]


def _latex_symbols(text: str) -> str:
    """Replace the Unicode symbols of labels by math mode (after pandas' LaTeX escaping)."""
    for u, tex in _LATEX_UNICODE:
        text = text.replace(u, tex)
    return re.sub(r"\bL2\b", r"$L_2$", text)


def to_latex(table: pd.DataFrame, *, ci: bool = True) -> str:
    """A booktabs ``tabular`` fragment (pandas ``Styler.to_latex``) for ``\\input`` in a paper.

    Cells and labels are LaTeX-escaped by pandas; a ``\\midrule`` opens each group and its header
    spans the table (``\\multicolumn``).
    """
    disp, headers = display_frame(table, ci=ci)
    ncol = len(disp.columns)
    styler = (disp.style.hide(axis="index")
              .format(escape="latex").format_index(escape="latex", axis=1))
    raw = styler.to_latex(hrules=True, column_format="l" + "r" * (ncol - 1))
    lines = raw.splitlines()
    first_mid = lines.index(r"\midrule")
    body_start = first_mid + 1
    out = lines[:body_start]
    for i, line in enumerate(lines[body_start:body_start + len(disp)]):
        if i in headers:
            label = line.split("&", 1)[0].strip()
            if i > 0:
                out.append(r"\midrule")
            out.append(rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{label}}}}} \\")
        else:
            out.append(line)
    out += lines[body_start + len(disp):]
    return _latex_symbols("\n".join(out)) + "\n"


def to_html(table: pd.DataFrame, *, ci: bool = True, caption: str | None = None) -> str:
    """An HTML ``<table>`` (escaped by pandas), group headers in bold, optional caption."""
    disp, headers = display_frame(table, ci=ci)
    styler = (disp.style.hide(axis="index").set_uuid("rgbench")
              .apply(lambda r: ["font-weight: bold" if r.name in headers else "" for _ in r], axis=1))
    if caption:
        styler = styler.set_caption(html.escape(caption))
    return styler.format(escape="html").to_html()


def to_csv(table: pd.DataFrame) -> str:
    """One line per (row, model): ``group,row,model,accuracy,ci_low,ci_high,n,model_id``.

    Accuracies are fractions; ``model`` is the display name, ``model_id`` the zoo id (the key of
    ``rgbench export`` rows).
    """
    return table[CSV_COLUMNS].to_csv(index=False)


def to_rich(table: pd.DataFrame, *, ci: bool = True, title: str | None = None) -> Table:
    """A rich Table for the terminal (sections per group)."""
    disp, headers = display_frame(table, ci=ci)
    out = Table(title=title, show_lines=False)
    # row labels are attack ids (never cut); group headers may wrap
    add_id_column(out, "", [str(v) for i, v in enumerate(disp.iloc[:, 0]) if i not in headers],
                  style="bold")
    for m in disp.columns[1:]:
        out.add_column(escape(str(m)), justify="right", overflow="fold")
    for i, line in enumerate(disp.itertuples(index=False)):
        if i in headers:
            out.add_section()
            out.add_row(Text(line[0], style="italic", overflow="fold", no_wrap=False),
                        *[""] * (len(disp.columns) - 1))
        else:
            out.add_row(*[escape(str(v)) for v in line])
    return out


def render(table: pd.DataFrame, fmt: str, *, caption: str | None = None) -> str:
    """Render ``table`` in ``fmt`` (one of :data:`FORMATS`) as text."""
    if fmt == "md":
        return to_markdown(table, caption=caption)
    if fmt == "tex":
        return to_latex(table)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "html":
        return to_html(table, caption=caption)
    if fmt == "term":
        buf = io.StringIO()
        Console(file=buf, width=200, color_system=None).print(to_rich(table, title=caption))
        return buf.getvalue()
    raise FormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}",
                      key="--format")


def distance_display(distances: pd.DataFrame, clean: dict[str, float]) -> pd.DataFrame:
    """Table 2.6 layout: one line per model, clean accuracy, then "mean / median" per attack.

    ``distances`` is :func:`tables.distance_table`; the ``all`` columns are the closest over the
    threat's minimal-norm attacks. A "(k unbroken)" note counts clean-correct samples no attack broke.
    """
    models = list(dict.fromkeys(distances.model))
    columns: dict[str, dict[str, str]] = {"Clean accuracy": {
        m: format_cell(clean.get(m, math.nan), math.nan, math.nan, ci=False) for m in models}}
    for (threat, attack), part in distances.groupby(["threat", "attack"], sort=False):
        label = f"{'All' if attack == 'all' else attack} ({'L∞' if threat == 'linf' else 'L2'})"
        col: dict[str, str] = {}
        for r in part.itertuples(index=False):
            text = MISSING if math.isnan(r.mean) else f"{r.mean:.3f} / {r.median:.3f}"
            if r.n_not_found:
                text += f" ({r.n_not_found} unbroken)"
            col[r.model] = text
        columns[label] = col
    disp = pd.DataFrame({k: [v.get(m, MISSING) for m in models] for k, v in columns.items()})
    disp.insert(0, "Model", models)
    return disp


def distances_markdown(disp: pd.DataFrame) -> str:
    """Markdown for :func:`distance_display`."""
    out = ["| " + " | ".join(disp.columns) + " |",
           "|" + "|".join([":---"] + ["---:"] * (len(disp.columns) - 1)) + "|"]
    out += ["| " + " | ".join(str(v).replace("|", r"\|") for v in line) + " |"
            for line in disp.itertuples(index=False)]
    return "\n".join(out) + "\n"


def distances_latex(disp: pd.DataFrame) -> str:
    """Booktabs fragment for :func:`distance_display`."""
    styler = (disp.style.hide(axis="index").format(escape="latex")
              .format_index(escape="latex", axis=1))
    return _latex_symbols(styler.to_latex(hrules=True, column_format="l" + "r" * (disp.shape[1] - 1)))
