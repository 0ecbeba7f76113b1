"""Committed leaderboards: Markdown and LaTeX of a shipped suite's run, with provenance.

    rgbench leaderboard runs/<suite> [runs/<suite2> ...] [--out leaderboards]
    (or python -m robustgen_bench.report.leaderboard ..., the same)

writes ``<out>/<suite>.md`` and ``<out>/<suite>.tex``; the first line of each names the command
that regenerates it. Only reads stored results (the runs themselves come from ``rgbench run``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from robustgen_bench.errors import UserInputError
from robustgen_bench.report.outputs import _remove_stale, _slug, curve_plots, example_models
from robustgen_bench.report.render import distance_display, distances_latex, distances_markdown
from robustgen_bench.report.render import to_latex, to_markdown
from robustgen_bench.report.runs import RunDirError, RunSet, incomplete_cells, load_runs
from robustgen_bench.checks.report import checks_latex, checks_markdown
from robustgen_bench.report.tables import accuracy_table, caption, distance_table, stored_checks
from robustgen_bench.stats import format_epsilon, threat_label


def _command(run_dir: Path, out_dir: Path) -> str:
    return f"rgbench leaderboard {run_dir.as_posix()} --out {out_dir.as_posix()}"


def _relative(path: str | None) -> str | None:
    """A path relative to the working directory (the repo) where possible, for portable text."""
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path


def _attack_text(a: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in (a.get("params") or {}).items())
    head = f"`{a.get('id')}` ({a.get('library')} {a.get('attack')}, {a.get('threat')}, ε = {a.get('epsilon'):g}"
    warm = a.get("surrogate")
    if warm:  # the adaptive hook the attack differentiated (full inference when absent)
        params += (", " if params else "") + (f"surrogate=warm ({warm['warm_steps']} steps, "
                                              f"radius {warm['radius']:g})")
    if a.get("eot") is not None:  # the suite's EOT draws instead of the zoo entry's
        params += (", " if params else "") + f"eot={a['eot']}"
    return head + (f", {params})" if params else ")")


def _suite_file_matches(suite_file: str | None, suite_hash: str,
                        command_line: dict[str, Any] | None = None) -> bool:
    """Whether the suite file as it is now, with the run's recorded ``--set``/``--limit``, still
    describes the run (same canonical hash)."""
    if not suite_file or not Path(suite_file).is_file():
        return False
    cl = command_line or {}
    try:
        from robustgen_bench.config import load_suite

        return load_suite(Path(suite_file), overrides=list(cl.get("set") or []),
                          limit=cl.get("limit")).hash() == suite_hash
    except Exception:  # noqa: BLE001 - a suite that no longer loads simply does not match
        return False


def _reproduce(suite_file: str | None, suite_hash: str, command_line: dict[str, Any] | None = None) -> str:
    cl = command_line or {}
    args = "".join(f" --set {shlex.quote(str(e))}" for e in cl.get("set") or [])
    if cl.get("limit") is not None:
        args += f" --limit {int(cl['limit'])}"
    if _suite_file_matches(suite_file, suite_hash, cl):
        return (f"- reproduce the run: `rgbench run {suite_file}{args}` (the suite file as committed"
                + (", with these overrides," if args else "") + " has the run's suite hash)")
    return (f"- reproduce the run: `rgbench run {suite_file or 'attack_suites/<suite>.yaml'}` with "
            "the `--set`/`--limit` overrides that give the canonical configuration below (the "
            "suite file has changed since, or the run used overrides)")


def _suite_notes(suite_file: str | None) -> list[str]:
    """The suite file's leading comment block (budgets, caveats), quoted."""
    if not suite_file or not Path(suite_file).is_file():
        return []
    notes = []
    for line in Path(suite_file).read_text().splitlines():
        if not line.startswith("#"):
            break
        notes.append("> " + line.lstrip("#").strip())
    return notes


def _rows_file(run_dir: Path, out_dir: Path, name: str) -> Path:
    """Write the run's per-sample rows beside the board (``<name>_rows.csv``), so that a re-run
    can be checked row by row against the committed board."""
    from robustgen_bench.export import export_csv

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_rows.csv"
    path.write_text(export_csv(run_dir))
    return path


def _provenance(runs: RunSet) -> list[str]:
    man = runs.manifests[0]
    suite = man.get("suite") or {}
    ds = man.get("dataset") or {}
    suite_file = _relative(man.get("suite_file"))
    lines = [f"- suite: `{suite.get('name', '?')}` ({suite_file or 'file unknown'}), "
             f"suite hash `{str(man.get('suite_hash', '?'))[:12]}`",
             f"- data: {ds.get('name', '?')} {ds.get('split', '?')}, n = {ds.get('n', '?')}, "
             f"seed {ds.get('seed', '?')}, indices hash `{str(ds.get('indices_hash', '?'))[:12]}`",
             f"- code: git commit `{str(man.get('git_commit', '?'))[:12]}`",
             _reproduce(suite_file, str(man.get("suite_hash", "")), man.get("command_line"))]
    models = [m for m in man.get("models") or [] if m.get("weights_sha256")]
    if models:  # which weights were measured: an entry may be retrained after the run
        lines.append("- weights (sha256): " + "; ".join(
            f"`{m['id']}` " + ", ".join(f"`{str(h)[:12]}`" for h in m["weights_sha256"])
            for m in models))
    attacks = suite.get("attacks") or []
    if attacks:
        lines.append("- attacks: " + "; ".join(_attack_text(a) for a in attacks))
    if suite:
        lines += ["", "<details><summary>Canonical configuration of the run</summary>", "",
                  "```yaml", yaml.safe_dump(suite, sort_keys=False, allow_unicode=True).rstrip(),
                  "```", "", "</details>"]
    return lines


def _sweeps(runs: RunSet, out_dir: Path, name: str, written: list[Path]) -> list[str]:
    """One section per swept attack: robust accuracy per value (rows) and model, and its plot.

    Appends every file it writes to ``written``."""
    from robustgen_bench.report.outputs import sweep_plots, sweep_stem
    from robustgen_bench.report.tables import sweep_table

    table = sweep_table(runs)
    if not len(table):
        return []
    files = sweep_plots(runs, out_dir, prefix=f"{name}_")
    written.extend(files)
    pngs = {p.stem: p for p in files if p.suffix == ".png"}
    md = ["## Sweeps", "",
          "Each swept attack's cells side by side: robust accuracy with Wilson 95 % intervals per "
          "value of the swept parameter (the cells are also rows of the table above).", ""]
    for (of, threat, eps), g in table.groupby(["of", "threat", "epsilon"], sort=False):
        param = g.param.iloc[0]
        md += [f"### `{of}`, {threat_label(str(threat))} ε = {format_epsilon(float(eps))}: "
               f"robust accuracy vs `{param}`", ""]
        g = g.assign(cell=[f"{acc:.1%} [{lo:.1%}, {hi:.1%}]" for acc, lo, hi
                           in zip(g.accuracy, g.ci_low, g.ci_high)],
                     setting=[f"{param} = {v}" + (f", {ln}" if ln else "")
                              for v, ln in zip(g.value, g.line)])
        wide = g.pivot_table(index="setting", columns="model", values="cell", aggfunc="first",
                             sort=False)
        md += ["| | " + " | ".join(map(str, wide.columns)) + " |",
               "|:---|" + "---:|" * len(wide.columns)]
        md += [f"| {setting} | " + " | ".join("" if not isinstance(c, str) else c for c in row)
               + " |" for setting, row in zip(wide.index, wide.to_numpy())]
        md += [""]
        stem = sweep_stem(str(of), str(threat), float(eps), prefix=f"{name}_")
        if stem in pngs:
            md += [f"![{of}: robust accuracy vs {param}]({pngs[stem].name})", ""]
    return md


def _figures(runs: RunSet, run_dir: Path, out_dir: Path, name: str, written: list[Path]) -> list[str]:
    """McNemar heat maps of the worst-case rows and the run's example grids, beside the board.

    Appends every file it writes to ``written``."""
    from robustgen_bench.report.plots import example_grid, load_examples, plot_pvalues
    from robustgen_bench.report.tables import mcnemar_tables
    from robustgen_bench.stats import worst_case_keys

    md: list[str] = []
    try:
        matrices = mcnemar_tables(runs)
    except UserInputError:  # an incomplete run published with --allow-incomplete
        matrices = {}
    keys = worst_case_keys(list(matrices))
    if keys:
        md += ["## McNemar p-values (worst case per threat)", ""]
    for key in keys:
        p = plot_pvalues(matrices[key], out_dir / f"{name}_mcnemar_{key.slug}.png",
                         f"McNemar p-values\n{key.group}", runs.stats.alpha)
        written.append(p)
        md += [f"![McNemar p-values, {key.group}]({p.name})", ""]
    tensors = load_examples(run_dir)
    if tensors is not None:
        cells = runs.results[runs.results.threat != "none"][["attack", "threat", "epsilon"]]
        budgets = {a: (str(g.threat.iloc[0]), float(g.epsilon.max())) for a, g in cells.groupby("attack")}
        grids = [(runs.display(m), example_grid(tensors, m, out_dir / f"{name}_examples_{_slug(m)}.png",
                                                title=runs.display(m), budgets=budgets))
                 for m in example_models(runs, tensors)]
        grids = [(m, g) for m, g in grids if g is not None]
        written.extend(g for _, g in grids)
        if grids:
            md += ["## Examples (clean above adversarial, largest budget per attack)", ""]
            md += [f"![Clean and adversarial examples, {m}]({g.name})\n" for m, g in grids]
    return md


def write_leaderboard(run_dir: str | Path, out_dir: str | Path = "leaderboards", *,
                      allow_incomplete: bool = False) -> list[Path]:
    """Write ``<out_dir>/<suite name>.md`` and ``.tex`` for one run directory.

    Refuses a run with unfinished cells (a leaderboard is published from complete runs only)
    unless ``allow_incomplete``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    runs = load_runs([run_dir])
    missing = incomplete_cells(runs)
    if missing and not allow_incomplete:
        raise RunDirError(f"the run is incomplete ({len(missing)} cells unfinished, e.g. "
                          f"{missing[0]}); finish it with the same `rgbench run` command",
                          file=run_dir)
    name = ((runs.manifests[0].get("suite") or {}).get("name")) or run_dir.name
    table = accuracy_table(runs)
    cap = caption(runs, table)
    cmd = _command(run_dir, out_dir)
    distances = distance_table(runs)
    clean = table[table.row == "Clean"].set_index("model").accuracy.to_dict()

    md = [f"<!-- Generated by `{cmd}` from stored results; do not edit by hand. -->", "",
          f"# Leaderboard: {name}", ""]
    if missing:
        md += [f"**Incomplete run:** {len(missing)} cells unfinished (e.g. {missing[0]}).", ""]
    limit = (runs.manifests[0].get("command_line") or {}).get("limit")
    if limit is not None:
        md += [f"**Prefix run:** `--limit {limit}` evaluated the first {limit} samples of the suite's "
               "seeded subset; running the suite without `--limit` into the same run directory "
               "reuses them and adds the rest.", ""]
    md += [to_markdown(table, caption=cap).rstrip(), ""]
    notes = _suite_notes(_relative(runs.manifests[0].get("suite_file")))
    if notes:
        md += ["## Suite notes (from the suite file)", "", *notes, ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if len(distances):
        md += ["## Closest adversarial distances (mean / median)", "",
               distances_markdown(distance_display(distances, clean)).rstrip(), ""]
        files = curve_plots(runs, out_dir, prefix=f"{name}_")
        written.extend(files)
        plots = [p for p in files if p.suffix == ".png"]
        for p in plots:
            md += [f"![Robust accuracy as a function of ε, from the closest adversarial distances]({p.name})", ""]
    md += _sweeps(runs, out_dir, name, written)
    md += _figures(runs, run_dir, out_dir, name, written)
    checks = stored_checks(runs)
    if checks:
        md += ["## Attack-failure checks", "",
               "Per model and threat: which checks passed, warned or failed, and the figure "
               "behind each verdict (`rgbench checks RUN_DIR`; README, \"Attack-failure checks\").",
               "", checks_markdown(checks, runs.display, runs.models).rstrip(), ""]
    rows = _rows_file(run_dir, out_dir, name)
    written.append(rows)
    md += ["## Provenance", "", *_provenance(runs), "",
           f"Per-sample rows: [{rows.name}]({rows.name}) (the `rgbench export` columns). "
           f"`rgbench compare RUN_DIR {(out_dir / rows.name).as_posix()}` pairs a re-run's rows "
           "with them (a `--limit` prefix run too) and exits 1 when a paired row differs.", ""]
    tex = [f"% Generated by `{cmd}` from stored results; do not edit by hand.", f"% {cap}",
           to_latex(table).rstrip()]
    if len(distances):
        tex += ["", "% Closest adversarial distances (mean / median)",
                distances_latex(distance_display(distances, clean)).rstrip()]

    if checks:
        tex += ["", "% Attack-failure checks (figures in the Markdown board)",
                checks_latex(checks, runs.display, runs.models).rstrip()]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.tex"]
    paths[0].write_text("\n".join(md) + "\n")
    paths[1].write_text("\n".join(tex) + "\n")
    # files of the board's earlier shape (a plot of an attack since removed) would otherwise
    # stay beside it, and the site would still find them
    _remove_stale(out_dir, written, prefix=f"{name}_")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("leaderboards"))
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="publish a run with unfinished cells (marked in the file)")
    args = parser.parse_args(argv)
    try:
        for d in args.run_dirs:
            for p in write_leaderboard(d, args.out, allow_incomplete=args.allow_incomplete):
                print(f"wrote {p}")
    except UserInputError as e:  # a broken or incomplete run, runs on different samples, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
