"""Write every report of a run directory, and render tables from one or several runs."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

from robustgen_bench.report.render import (
    distance_display,
    distances_latex,
    distances_markdown,
    render,
    to_rich,
)
from robustgen_bench.report.runs import RunSet, finished_prefix, load_runs, restrict
from robustgen_bench.stats import SampleSetMismatch
from robustgen_bench.report.tables import (
    accuracy_table,
    caption,
    distance_table,
    mcnemar_tables,
    stored_checks,
)
from robustgen_bench.stats import (
    THREAT_ORDER,
    closest_distances,
    format_epsilon,
    robust_accuracy_curve,
    threat_label,
    worst_case_keys,
)

#: Table formats written into every run directory.
RUN_FORMATS = ("md", "tex", "csv", "html")
CURVE_POINTS = 201


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def render_table(run_dirs: Sequence[str | Path], fmt: str, limit: int | None = None) -> str:
    """The accuracy table of one or several runs (same samples required) as ``fmt`` text.

    ``fmt``: md | tex | csv | html | term. Markdown and HTML carry the caption; LaTeX carries it as
    a comment line above the tabular (the fragment is meant for ``\\input`` inside a table float).
    ``limit``: only the subset's first ``limit`` samples (each must be stored in every cell).
    """
    runs = load_runs(list(run_dirs))
    if limit is not None:
        runs = restrict(runs, limit)
    try:
        table = accuracy_table(runs)
    except SampleSetMismatch as e:
        k = finished_prefix(runs) if runs.dataset.get("indices") else 0
        if limit is None and k:
            raise SampleSetMismatch(f"{e.detail}; or tabulate the first {k} samples, finished in "
                                    f"every cell, with --limit {k}") from None
        raise
    cap = caption(runs, table) if fmt in ("md", "html", "tex", "term") else None
    text = render(table, fmt, caption=None if fmt == "tex" else cap)
    if fmt == "tex" and cap:
        text = "% " + cap + "\n" + text
    return text + checks_section(runs, fmt)


CHECKS_TITLE = "Attack-failure checks"


def checks_section(runs: RunSet, fmt: str) -> str:
    """The Checks section appended to a table in ``fmt`` (md, html, term); "" when no check
    result is stored or the format holds a single table (tex, csv)."""
    from robustgen_bench.checks.report import checks_frame, checks_markdown, checks_rich

    results = stored_checks(runs)
    if not results or fmt in ("tex", "csv"):
        return ""
    if fmt == "md":
        return f"\n### {CHECKS_TITLE}\n\n" + checks_markdown(results, runs.display, runs.models)
    if fmt == "html":
        frame = checks_frame(results, runs.display, runs.models)
        return f"\n<h3>{CHECKS_TITLE}</h3>\n" + frame.to_html(index=False, escape=True) + "\n"
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(
        checks_rich(results, runs.display, runs.models))
    return buf.getvalue()


def checks_summary(run_dir: str | Path) -> Table | None:
    """The stored checks of a run as a rich table (None when none is stored)."""
    from robustgen_bench.checks.report import checks_rich

    runs = load_runs([run_dir])
    results = stored_checks(runs)
    return checks_rich(results, runs.display, runs.models) if results else None


def summary_table(run_dir: str | Path) -> Table:
    """A rich table of accuracy with Wilson intervals, for the end of ``rgbench run``.

    Lenient about incomplete cells (intersection of samples), unlike the written reports.
    """
    runs = load_runs([run_dir])
    return to_rich(accuracy_table(runs, strict=False),
                   title="Accuracy under attack, % [Wilson 95% CI]")


def curve_plots(runs: RunSet, run_dir: Path, prefix: str = "") -> list[Path]:
    """Robust accuracy vs ε per threat (from minimal-norm distances): CSV + PNG in ``run_dir``."""
    from robustgen_bench.report.plots import plot_robust_accuracy

    df = runs.results
    out: list[Path] = []
    for threat in [t for t in THREAT_ORDER if ((df.threat == t) & df.minimal_norm).any()]:
        finite = [d[np.isfinite(d)].max() for m in runs.models
                  if len(d := closest_distances(df, m, threat)) and np.isfinite(d).any()]
        budgets = sorted(set(df[(df.threat == threat)].epsilon.astype(float)))
        hi = max(finite + budgets + [0.0])
        if not hi > 0 or math.isnan(hi):
            continue
        grid = np.linspace(0.0, 1.05 * hi, CURVE_POINTS)
        curve = robust_accuracy_curve(df, threat, grid, runs.models).rename(columns=runs.display)
        csv_path = run_dir / f"{prefix}robust_accuracy_{threat}.csv"
        curve.to_csv(csv_path)
        out.append(csv_path)
        marks = {e: f"ε={format_epsilon(e)}" for e in budgets}
        out.append(plot_robust_accuracy(curve, threat, run_dir / f"{prefix}robust_accuracy_{threat}.png",
                                        marks))
    return out


def sweep_stem(of: str, threat: str, epsilon: float, prefix: str = "") -> str:
    """File stem of one sweep's CSV and PNG: ``<prefix>sweep_<attack>_<threat>-<ε>``."""
    return f"{prefix}sweep_{_slug(of)}_{threat}-{format_epsilon(epsilon)}"


def sweep_plots(runs: RunSet, run_dir: Path, prefix: str = "") -> list[Path]:
    """Per sweep and budget: ``sweep_<attack>_<threat>-<ε>.{csv,png}`` in ``run_dir``."""
    from robustgen_bench.report.plots import plot_sweep
    from robustgen_bench.report.tables import sweep_table

    table = sweep_table(runs)
    out: list[Path] = []
    for (of, threat, eps), g in table.groupby(["of", "threat", "epsilon"], sort=False):
        stem = sweep_stem(str(of), str(threat), float(eps), prefix)
        csv_path = run_dir / f"{stem}.csv"
        g.to_csv(csv_path, index=False)
        out.append(csv_path)
        title = (f"{of}: robust accuracy vs {g.param.iloc[0]}, "
                 f"{threat_label(str(threat))} ε = {format_epsilon(float(eps))}")
        out.append(plot_sweep(g, run_dir / f"{stem}.png", title))
    return out


def example_models(runs: RunSet, tensors: dict) -> list[str]:
    """Models with stored examples that belong to the run as last run (the examples file, like
    the store, keeps models an earlier suite had), in the order examples were stored."""
    current = set(runs.results.model)
    return [m for m in dict.fromkeys(k.rsplit("|", 2)[0] for k in tensors) if m in current]


def _example_plots(runs: RunSet, run_dir: Path) -> list[Path]:
    from robustgen_bench.report.plots import example_grid, load_examples

    tensors = load_examples(run_dir)
    if tensors is None:
        return []
    models = example_models(runs, tensors)
    # The runner keeps the examples of an attack's largest budget.
    cells = runs.results[runs.results.threat != "none"][["attack", "threat", "epsilon"]]
    budgets = {a: (str(g.threat.iloc[0]), float(g.epsilon.max())) for a, g in cells.groupby("attack")}
    paths = [example_grid(tensors, m, run_dir / f"examples_{_slug(m)}.png", title=runs.display(m),
                          budgets=budgets) for m in models]
    return [p for p in paths if p is not None]


def write_reports(run_dir: str | Path) -> list[Path]:
    """Write tables, McNemar matrices, caption, distances and plots into ``run_dir``.

    Files: table.<fmt> for the suite's ``report.formats`` (md, tex, csv, html; all four when the
    manifest does not say), caption.txt, mcnemar_<row>.csv (one p-value matrix per row
    with two or more models), distances.csv (+ distances.{md,tex} in Table 2.6 layout when there
    are minimal-norm attacks), robust_accuracy_<threat>.{png,csv} (from
    minimal-norm attacks), mcnemar_<worst-case row>.png heat maps and examples_<model>.png (when the runner saved examples.safetensors), unless the
    suite's ``report.plots`` is false. Refuses rows whose models saw different samples.
    """
    run_dir = Path(run_dir)
    runs = load_runs([run_dir])
    table = accuracy_table(runs)
    cap = caption(runs, table)
    written: list[Path] = []

    def write(name: str, text: str) -> None:
        p = run_dir / name
        p.write_text(text)
        written.append(p)

    report_cfg = (runs.manifests[0].get("suite") or {}).get("report") or {}
    formats = [f for f in report_cfg.get("formats", RUN_FORMATS) if f in RUN_FORMATS]
    for fmt in formats:
        text = render(table, fmt, caption=None if fmt in ("tex", "csv") else cap)
        write(f"table.{fmt}", text + checks_section(runs, fmt))
    write("caption.txt", cap + "\n")
    results = stored_checks(runs)
    if results:
        from robustgen_bench.checks.report import checks_frame, checks_markdown

        write("checks.md", f"# {CHECKS_TITLE}\n\n" + checks_markdown(results, runs.display,
                                                                     runs.models))
        write("checks.csv", checks_frame(results, runs.display, runs.models).to_csv(index=False))
    matrices = mcnemar_tables(runs)
    for key, mat in matrices.items():
        write(f"mcnemar_{key.slug}.csv", mat.to_csv(index_label="model"))
    distances = distance_table(runs)
    write("distances.csv", distances.to_csv(index=False))
    if len(distances):
        clean = table[table.row == "Clean"].set_index("model").accuracy.to_dict()
        disp = distance_display(distances, clean)
        write("distances.md", "Mean / median distance of the closest adversarial example found by "
              "the minimal-norm attacks (clean-correct samples where one was found).\n\n"
              + distances_markdown(disp))
        write("distances.tex", distances_latex(disp))
    if report_cfg.get("plots", True):
        from robustgen_bench.report.plots import plot_pvalues

        for key in worst_case_keys(list(matrices)):  # the thesis's "McNemar's test p values"
            written.append(plot_pvalues(matrices[key], run_dir / f"mcnemar_{key.slug}.png",
                                        f"McNemar p-values\n{key.group}", runs.stats.alpha))
        written += curve_plots(runs, run_dir)
        written += sweep_plots(runs, run_dir)
        written += _example_plots(runs, run_dir)
    _remove_stale(run_dir, written)
    return written


#: Per-row/per-model outputs whose set changes with the results; stale ones would mislead.
GENERATED_PATTERNS = ("checks.md", "checks.csv", "mcnemar_*.csv", "mcnemar_*.png", "robust_accuracy_*.csv",
                      "robust_accuracy_*.png", "examples_*.png", "sweep_*.csv", "sweep_*.png")


def _remove_stale(run_dir: Path, written: list[Path], prefix: str = "") -> None:
    """Delete report files (``prefix`` + a generated pattern) of an earlier write that this
    write did not produce again."""
    keep = {p.resolve() for p in written}
    for pattern in GENERATED_PATTERNS:
        for p in run_dir.glob(prefix + pattern):
            if p.resolve() not in keep:
                p.unlink()
