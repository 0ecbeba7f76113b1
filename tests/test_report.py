"""Reports from a real store: golden Markdown, LaTeX structure, CSV contract, run combination,
written files and the ``rgbench table`` command."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from rich.console import Console
from safetensors.torch import save_file
from test_stats_store import Cell, Run, write_run
from typer.testing import CliRunner

from robustgen_bench.errors import UserInputError
from robustgen_bench.report import render_table, summary_table, write_reports
from robustgen_bench.report.cli_table import table_command
from robustgen_bench.report.runs import RunDirError
from robustgen_bench.report.status import run_status, status_lines

GOLDEN = Path(__file__).parent / "golden"
T, F = True, False


def small_run(tmp_path: Path, name: str = "small", **kw: object) -> Path:
    """8 samples, 3 models, an L∞ group with two attacks and an L2 group with one."""
    models = {"m/cnn": "CNN", "m/adv": "Adv-L∞", "m/abs": "ABS"}
    clean = {"m/cnn": [T, T, T, T, T, T, T, F], "m/adv": [T, T, T, T, T, T, F, F],
             "m/abs": [T, T, T, T, T, F, F, F]}
    cells = [
        Cell("m/cnn", "pgd", "linf", 0.3, [F, F, F, F, F, F, F, F]),
        Cell("m/adv", "pgd", "linf", 0.3, [T, T, T, T, F, F, F, F]),
        Cell("m/abs", "pgd", "linf", 0.3, [T, F, T, F, T, F, F, F]),
        Cell("m/cnn", "deepfool", "linf", 0.3, [T, F, F, F, F, F, F, F]),
        Cell("m/adv", "deepfool", "linf", 0.3, [T, T, T, F, T, F, F, F]),
        Cell("m/abs", "deepfool", "linf", 0.3, [F, T, T, F, T, F, F, F]),
        Cell("m/cnn", "ddn", "l2", 1.5, [T, T, F, F, F, F, F, F],
             [2.0, 1.8, 0.4, 0.9, 1.1, 0.2, 0.3, None], True),
        Cell("m/adv", "ddn", "l2", 1.5, [T, T, T, F, F, F, F, F],
             [2.5, 3.0, 1.6, 1.0, 0.5, 0.1, None, None], True),
        Cell("m/abs", "ddn", "l2", 1.5, [T, T, T, T, F, F, F, F],
             [None, 4.0, 2.2, 1.7, 1.5, None, None, None], True),
    ]
    return write_run(tmp_path / name, Run(models, clean, cells, **kw))  # type: ignore[arg-type]


def test_markdown_matches_golden_file(tmp_path: Path) -> None:
    text = render_table([small_run(tmp_path)], "md")
    golden = GOLDEN / "small_table.md"
    if os.environ.get("RGBENCH_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_markdown_numbers_are_the_hand_counts(tmp_path: Path) -> None:
    # Independent of the golden file: spot-check cells against counts read off small_run.
    lines = [ln for ln in render_table([small_run(tmp_path)], "md").splitlines() if ln.startswith("|")]
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines}
    assert cells["Clean"][0].startswith("87.5%")  # CNN 7/8
    assert cells["All L∞"][1].startswith("37.5%")  # Adv: pgd {0,1,2,3} AND deepfool {0,1,2,4}
    assert cells["All L∞"][2].startswith("25.0%")  # ABS: {0,2,4} AND {1,2,4} = {2,4}
    assert cells["**L∞ attack (ε = 0.3)**"] == ["", "", ""]


def test_latex_is_a_booktabs_fragment_with_consistent_columns(tmp_path: Path) -> None:
    run = write_run(tmp_path / "tex", Run({"a": "A&B_1%", "b": "Adv-L∞"},
                                          {"a": [T, F, T], "b": [T, T, F]},
                                          [Cell("a", "pgd#1", "linf", 8 / 255, [T, F, F]),
                                           Cell("b", "pgd#1", "linf", 8 / 255, [F, T, F])]))
    tex = render_table([run], "tex")
    lines = [ln for ln in tex.splitlines() if not ln.startswith("%")]
    assert lines[0] == r"\begin{tabular}{lrr}" and lines[-1] == r"\end{tabular}"
    assert r"\begin{table}" not in tex  # a fragment to \input inside the paper's float
    assert [ln for ln in lines if ln in (r"\toprule", r"\bottomrule")] == [r"\toprule", r"\bottomrule"]
    assert lines[1] == r"\toprule" and lines[-2] == r"\bottomrule"
    assert lines.count(r"\midrule") == 2  # after the header, before the L∞ group
    ncols = 3
    rows = [ln for ln in lines if ln.endswith(r"\\")]
    for ln in rows:
        if ln.startswith(r"\multicolumn"):
            assert ln.startswith(rf"\multicolumn{{{ncols}}}{{l}}")
        else:
            assert len(re.findall(r"(?<!\\)&", ln)) == ncols - 1, ln
    header = rows[0]
    assert r"A\&B\_1\%" in header and r"Adv-$L_\infty$" in header
    assert r"pgd\#1" in tex and r"$\epsilon$ = 8/255" in tex
    assert "%" not in re.sub(r"\\%", "", "\n".join(lines))  # every percent sign escaped
    body = "\n".join(lines)
    assert "∞" not in body and "ε" not in body  # Unicode symbols mapped to math mode


def test_csv_contract(tmp_path: Path) -> None:
    df = pd.read_csv(io.StringIO(render_table([small_run(tmp_path)], "csv")))
    # the documented columns, then the zoo id of each display name (joins with `rgbench export`)
    assert list(df.columns) == ["group", "row", "model", "accuracy", "ci_low", "ci_high", "n",
                                "model_id"]
    assert pd.api.types.is_float_dtype(df.accuracy)
    assert df.accuracy.between(0, 1).all() and (df.ci_low <= df.accuracy).all()
    assert (df.accuracy <= df.ci_high).all() and (df.n == 8).all()
    assert len(df) == 5 * 3  # (Clean, pgd, deepfool, All L∞, ddn) x 3 models; no All for 1 attack
    row = df[(df.row == "ddn") & (df.model == "ABS")].iloc[0]
    assert row.accuracy == 0.5 and row.group == "L2 attack (ε = 1.5)"
    assert dict(zip(df.model, df.model_id)) == {"CNN": "m/cnn", "Adv-L∞": "m/adv", "ABS": "m/abs"}


def test_write_reports_files(tmp_path: Path) -> None:
    run = small_run(tmp_path, plots=True)
    x = torch.rand(4, 1, 28, 28)
    save_file({"m/cnn|pgd|x": x, "m/cnn|pgd|x_adv": (x + 0.1).clamp(0, 1),
               "m/cnn|pgd|y": torch.arange(4), "m/cnn|pgd|adv_pred": torch.arange(4) + 1},
              str(run / "examples.safetensors"))
    names = {p.name for p in write_reports(run)}
    assert {"table.md", "table.tex", "table.csv", "table.html", "caption.txt", "distances.csv",
            "mcnemar_clean.csv", "mcnemar_linf-0.3_all.csv", "mcnemar_l2-1.5_ddn.csv",
            "robust_accuracy_l2.png", "robust_accuracy_l2.csv", "examples_m-cnn.png", "mcnemar_linf-0.3_all.png"} <= names
    for n in names:
        assert (run / n).stat().st_size > 0
    mat = pd.read_csv(run / "mcnemar_linf-0.3_all.csv", index_col="model")
    assert list(mat.columns) == list(mat.index) == ["CNN", "Adv-L∞", "ABS"]
    assert ((mat.fillna(1) >= 0) & (mat.fillna(1) <= 1)).all().all()
    assert (run / "robust_accuracy_l2.png").read_bytes()[:4] == b"\x89PNG"
    dist = pd.read_csv(run / "distances.csv")
    adv = dist[(dist.model == "Adv-L∞") & (dist.attack == "all")].iloc[0]
    assert adv["median"] == pytest.approx((1.0 + 1.6) / 2) and adv.n_found == 6  # 2 clean-wrong
    # Table 2.6 layout (mean / median over clean-correct samples where an adversarial was found)
    md = (run / "distances.md").read_text()
    assert "| Adv-L∞ | 75.0% | 1.450 / 1.300 | 1.450 / 1.300 |" in md
    # ABS: clean-correct samples 0-4, nothing found on sample 0; (4.0+2.2+1.7+1.5)/4, median 1.95
    assert md.splitlines()[-1] == "| ABS | 62.5% | 2.350 / 1.950 (1 unbroken) | 2.350 / 1.950 (1 unbroken) |"


def test_write_reports_without_examples_skips_the_grid(tmp_path: Path) -> None:
    names = {p.name for p in write_reports(small_run(tmp_path, plots=True))}
    assert not any(n.startswith("examples_") for n in names)


def test_combining_runs_and_refusing_conflicts(tmp_path: Path) -> None:
    a = small_run(tmp_path, "a")
    b = write_run(tmp_path / "b", Run({"m/eabs": "E-ABS"}, {"m/eabs": [T] * 8},
                                      [Cell("m/eabs", "pgd", "linf", 0.3, [T] * 4 + [F] * 4)]))
    df = pd.read_csv(io.StringIO(render_table([a, b], "csv")))
    assert list(dict.fromkeys(df.model)) == ["CNN", "Adv-L∞", "ABS", "E-ABS"]
    e = df[df.model == "E-ABS"].set_index("row")
    assert e.loc["pgd", "accuracy"] == 0.5 and "ddn" not in e.index
    # The same (model, attack, ε) with a different configuration in two runs is ambiguous.
    c = write_run(tmp_path / "c", Run({"m/cnn": "CNN"}, {"m/cnn": [T] * 8},
                                      [Cell("m/cnn", "pgd", "linf", 0.3, [T] * 8)],
                                      dataset="mnist"))
    import sqlite3

    with sqlite3.connect(c / "results.sqlite") as conn:  # give c's pgd cell another config key
        conn.execute("UPDATE results SET cell_key = 'other' WHERE attack = 'pgd'")
        conn.execute("UPDATE cells SET cell_key = 'other' WHERE attack = 'pgd'")
    import json

    man = json.loads((c / "manifest.json").read_text())
    for cell in man["cells"]:
        if cell["attack"] == "pgd":
            cell["key"] = "other"
    (c / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(RunDirError, match="different configurations"):
        render_table([a, c], "md")


def test_table_command(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(table_command)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode, as under rgbench
    run = small_run(tmp_path)
    res = CliRunner().invoke(app, ["table-command", str(run), "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("group,row,model,accuracy,ci_low,ci_high,n,model_id\n")
    out = tmp_path / "t.tex"
    res = CliRunner().invoke(app, ["table-command", str(run), "--format", "tex", "--out", str(out)])
    assert res.exit_code == 0 and out.read_text().count(r"\toprule") == 1
    res = CliRunner().invoke(app, ["table-command", str(run), "--format", "docx"])
    assert isinstance(res.exception, UserInputError) and "docx" in str(res.exception)
    res = CliRunner().invoke(app, ["table-command", str(tmp_path / "missing")])
    assert isinstance(res.exception, UserInputError)


def test_summary_table_renders(tmp_path: Path) -> None:
    table = summary_table(small_run(tmp_path))
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None).print(table)
    text = buf.getvalue()
    assert "All L∞" in text and "Adv-L∞" in text and "87.5%" in text


def test_leaderboard_files_name_their_command(tmp_path: Path) -> None:
    from robustgen_bench.report.leaderboard import main

    run = small_run(tmp_path)
    assert main([str(run), "--out", str(tmp_path / "lb")]) == 0
    md = (tmp_path / "lb" / "small.md").read_text().splitlines()
    tex = (tmp_path / "lb" / "small.tex").read_text().splitlines()
    cmd = f"rgbench leaderboard {run.as_posix()} --out {(tmp_path / 'lb').as_posix()}"
    assert cmd in md[0] and md[0].startswith("<!--") and cmd in tex[0] and tex[0].startswith("%")
    assert render_table([run], "md").splitlines()[0] in md  # the same table as `rgbench table`
    assert r"\toprule" in tex and "## Closest adversarial distances (mean / median)" in md
    # the ε curve behind the distance table is plotted next to the leaderboard and embedded
    pngs = [line.split("(")[-1].rstrip(")") for line in md if line.startswith("![")]
    assert pngs and all((tmp_path / "lb" / p).is_file() and p.startswith("small_") for p in pngs)


def test_leaderboard_removes_files_of_its_earlier_shape(tmp_path: Path) -> None:
    """A rewritten board deletes its generated plots and CSVs (``<name>_`` + a generated pattern)
    that this write did not produce again; other files, and other boards' files, stay."""
    from robustgen_bench.report.leaderboard import write_leaderboard

    run, lb = small_run(tmp_path), tmp_path / "lb"
    board = write_leaderboard(run, lb)[0]
    for f in ("small_robust_accuracy_l1.png", "small_robust_accuracy_l1.csv", "small_mine.png",
              "other_robust_accuracy_linf.png"):
        (lb / f).write_text("old")
    board.write_text(board.read_text() + "\n![old](small_robust_accuracy_l1.png)\n"
                     "![theirs](other_robust_accuracy_linf.png)\n")
    write_leaderboard(run, lb)
    assert not (lb / "small_robust_accuracy_l1.png").exists()
    assert not (lb / "small_robust_accuracy_l1.csv").exists()
    assert (lb / "small_mine.png").exists() and (lb / "other_robust_accuracy_linf.png").exists()
    linked = re.findall(r"\]\(([^)]+)\)", board.read_text())
    assert linked and all((lb / f).is_file() for f in linked)


def test_leaderboard_refuses_an_incomplete_run(tmp_path: Path) -> None:
    from robustgen_bench.report.leaderboard import main, write_leaderboard

    run = write_run(tmp_path / "part", Run({"a": "A"}, {"a": [T] * 4},
                                           [Cell("a", "pgd", "linf", 0.3, [T, F], samples=[100, 101])]))
    with pytest.raises(RunDirError, match="incomplete .*a / pgd .*2 of 4 samples"):
        write_leaderboard(run, tmp_path / "lb")
    assert main([str(run), "--out", str(tmp_path / "lb")]) == 2
    md = write_leaderboard(run, tmp_path / "lb", allow_incomplete=True)[0].read_text()
    assert "**Incomplete run:** 1 cells unfinished" in md


def test_write_reports_honours_the_suite_formats(tmp_path: Path) -> None:
    names = {p.name for p in write_reports(small_run(tmp_path, formats=("md", "csv")))}
    assert {"table.md", "table.csv"} <= names and not {"table.tex", "table.html"} & names


def test_write_reports_removes_its_stale_outputs(tmp_path: Path) -> None:
    run = small_run(tmp_path)
    (run / "mcnemar_linf-0.9_all.csv").write_text("old")
    (run / "notes.txt").write_text("mine")
    write_reports(run)
    assert not (run / "mcnemar_linf-0.9_all.csv").exists() and (run / "notes.txt").exists()


def test_grid_flags_over_budget_examples() -> None:
    from robustgen_bench.report.plots import _over_budget

    x = torch.zeros(3, 1, 4, 4)
    x_adv = x.clone()
    x_adv[1, 0, 0, 0] = 0.5  # L2 0.5, Linf 0.5
    x_adv[2] = 0.5  # L2 2.0, Linf 0.5
    assert _over_budget(x, x_adv, ("l2", 1.5)) == [False, False, True]
    assert _over_budget(x, x_adv, ("linf", 0.3)) == [False, True, True]
    assert _over_budget(x, x_adv, None) == [False] * 3


def test_leaderboard_reproduce_line_carries_the_runs_overrides(tmp_path: Path) -> None:
    from robustgen_bench.config import load_suite
    from robustgen_bench.report.leaderboard import _reproduce

    suite = Path("attack_suites/mnist.yaml")
    run = load_suite(suite, overrides=["attacks.pgd-linf.steps=5"], limit=7)
    line = _reproduce(str(suite), run.hash(), {"set": list(run.overrides), "limit": run.limit})
    assert f"`rgbench run {suite} --set attacks.pgd-linf.steps=5 --limit 7`" in line
    # without the recorded overrides the committed file does not give the run's hash
    assert "has changed since, or the run used overrides" in _reproduce(str(suite), run.hash())


def test_leaderboard_of_a_limited_run_says_so(tmp_path: Path) -> None:
    from robustgen_bench.report.leaderboard import write_leaderboard

    run = small_run(tmp_path)
    assert "Prefix run" not in write_leaderboard(run, tmp_path / "lb")[0].read_text()
    man = json.loads((run / "manifest.json").read_text())
    man["command_line"] = {"set": [], "limit": 4}
    (run / "manifest.json").write_text(json.dumps(man))
    assert "**Prefix run:** `--limit 4`" in write_leaderboard(run, tmp_path / "lb")[0].read_text()


def test_example_grids_only_for_the_run_as_last_run() -> None:
    """The examples file keeps models an earlier suite had; the reports draw only current ones."""
    from types import SimpleNamespace

    from robustgen_bench.report.outputs import example_models

    runs = SimpleNamespace(results=pd.DataFrame({"model": ["mnist/b", "mnist/a", "mnist/a"]}))
    tensors = {"mnist/old|pgd|0.3": None, "mnist/a|pgd|0.3": None, "mnist/b|pgd|0.3": None,
               "mnist/a|clean|0": None}
    assert example_models(runs, tensors) == ["mnist/a", "mnist/b"]


def test_leaderboard_provenance_names_the_measured_weights(tmp_path: Path) -> None:
    """The board says which weights were attacked (an entry may be retrained after the run)."""
    from robustgen_bench.report.leaderboard import write_leaderboard

    run = small_run(tmp_path)
    man = json.loads((run / "manifest.json").read_text())
    man["models"] = [{"id": "mnist/a", "weights_sha256": ["ab" * 32]},
                     {"id": "mnist/b", "weights_sha256": []}]
    (run / "manifest.json").write_text(json.dumps(man))
    md = write_leaderboard(run, tmp_path / "lb")[0].read_text()
    [line] = [ln for ln in md.splitlines() if ln.startswith("- weights (sha256):")]
    assert line == "- weights (sha256): `mnist/a` `abababababab`"


ORDER = [105, 101, 103, 100, 104, 102]  # a seeded subset's order, not sorted


def stopped_run(tmp_path: Path) -> Path:
    """Two models; pgd finished on all six samples, deepfool stopped after the subset's first four."""
    order = ORDER
    return write_run(tmp_path / "stopped", Run(
        {"a": "A", "b": "B"}, {"a": [T, T, T, T, F, T], "b": [T, F, T, T, T, T]},
        [Cell("a", "pgd", "linf", 0.3, [T, F, T, F, F, T]),
         Cell("b", "pgd", "linf", 0.3, [T, F, F, F, T, T]),
         # deepfool stopped after the first four samples of the subset (batch-major runner)
         Cell("a", "deepfool", "linf", 0.3, [F, F, T, T], samples=order[:4]),
         Cell("b", "deepfool", "linf", 0.3, [T, F, T, F], samples=order[:4])],
        samples=order))


def test_table_of_a_stopped_run_over_its_finished_prefix(tmp_path: Path) -> None:
    from robustgen_bench.report.runs import finished_prefix, load_runs
    from robustgen_bench.stats import SampleSetMismatch

    run = stopped_run(tmp_path)
    assert finished_prefix(load_runs([run])) == 4
    with pytest.raises(SampleSetMismatch, match="with --limit 4"):
        render_table([run], "md")
    with pytest.raises(RunDirError, match="only the first 4 samples .*--limit ≤ 4"):
        render_table([run], "md", limit=5)
    rows = pd.read_csv(io.StringIO(render_table([run], "csv", limit=4)))
    assert (rows.n == 4).all()
    acc = rows.set_index(["row", "model"]).accuracy
    # by hand on samples 105, 101, 103, 100: A clean TTTT, pgd TFTF, deepfool FFTT, all FFTF
    assert acc[("Clean", "A")] == 1.0 and acc[("pgd", "A")] == 0.5
    assert acc[("deepfool", "A")] == 0.5 and acc[("All L∞", "A")] == 0.25
    # B: clean TFTT, pgd TFFF, deepfool TFTF, all TFFF
    assert acc[("Clean", "B")] == 0.75 and acc[("All L∞", "B")] == 0.25


def test_status_of_a_stopped_run(tmp_path: Path) -> None:
    import sqlite3

    run = stopped_run(tmp_path)
    con = sqlite3.connect(run / "results.sqlite")
    with con:  # 2 s per stored sample in every cell
        con.execute("UPDATE cells SET seconds = 2.0 * (SELECT COUNT(*) FROM results r "
                    "WHERE r.cell_key = cells.cell_key)")
    con.close()
    st = run_status(run)
    assert st.n == 6 and st.prefix == 4 and len(st.cells) == 2 * 3
    df = st.cells.set_index(["model", "attack"])
    assert df.loc[("a", "deepfool"), "done"] == 4 and df.loc[("b", "pgd"), "done"] == 6
    assert st.seconds == 2.0 * (6 * 4 + 4 * 2)
    assert st.remaining_seconds == 2.0 * 2 * 2  # two deepfool cells, two samples each
    lines = "\n".join(status_lines(st, run))
    assert f"first 4 of 6 samples → rgbench table {run.as_posix()} --limit 4" in lines
    assert "remaining: ≈ 8 s of compute" in lines and "compute so far: 1 min" in lines

    from robustgen_bench.cli import main

    assert main(["status", str(run)]) == 0
    assert main(["status", str(tmp_path / "missing")]) == 2


def test_reports_of_a_limit_run_use_its_samples_even_if_the_store_holds_more(tmp_path: Path) -> None:
    from robustgen_bench.report.leaderboard import main
    from robustgen_bench.store import read_manifest, write_manifest

    run = stopped_run(tmp_path)
    # a full run was stopped; `rgbench run … --limit 4` then rewrote the manifest for 4 samples
    man = read_manifest(run)
    man["dataset"] = {**man["dataset"], "n": 4, "indices": ORDER[:4]}
    man["command_line"] = {"set": [], "limit": 4}
    write_manifest(run, man)
    rows = pd.read_csv(io.StringIO(render_table([run], "csv")))
    assert (rows.n == 4).all()
    assert main([str(run), "--out", str(tmp_path / "lb")]) == 0
    assert "**Prefix run:** `--limit 4`" in (tmp_path / "lb" / "stopped.md").read_text()
    st = run_status(run)  # counts what is stored (6 samples of pgd), says the run was limited
    assert st.n == 4 and st.cells.set_index(["model", "attack"]).loc[("a", "pgd"), "done"] == 6
    assert any("--limit 4" in line for line in status_lines(st, run))
    # without the limit the leaderboard refuses (different samples), with a message, exit 2
    man["dataset"] = {**man["dataset"], "n": 6, "indices": ORDER}
    man["command_line"] = {"set": [], "limit": None}
    write_manifest(run, man)
    assert main([str(run), "--out", str(tmp_path / "lb2"), "--allow-incomplete"]) == 2


def test_swept_attack_gets_a_table_and_a_plot_per_budget(tmp_path: Path) -> None:
    from robustgen_bench.report.leaderboard import main
    from robustgen_bench.report.runs import load_runs
    from robustgen_bench.report.tables import sweep_table
    from robustgen_bench.stats import wilson_interval

    models = {"m/cnn": "CNN", "m/abs": "ABS"}
    clean = {"m/cnn": [T] * 8, "m/abs": [T] * 8}
    steps = {1: ([T] * 6 + [F] * 2, [T] * 8), 10: ([T] * 2 + [F] * 6, [T] * 5 + [F] * 3)}
    cells = [Cell(m, f"pgd@steps={s}", "linf", 0.3, c[i]) for s, c in steps.items()
             for i, m in enumerate(models)]
    run = write_run(tmp_path / "sw", Run(models, clean, cells, plots=True))
    man_path = run / "manifest.json"
    man = json.loads(man_path.read_text())
    for a in man["suite"]["attacks"]:  # what the suite loader records for a swept attack
        a["sweep"] = {"of": "pgd", "values": [["steps", int(a["id"].split("=")[1])]]}
    man_path.write_text(json.dumps(man))

    table = sweep_table(load_runs([run]))
    assert list(table.value) == [1, 1, 10, 10] and set(table.param) == {"steps"}
    abs10 = table[(table.model == "ABS") & (table.value == 10)].iloc[0]
    assert abs10.accuracy == 5 / 8 and (abs10.ci_low, abs10.ci_high) == pytest.approx(wilson_interval(5, 8))

    assert main([str(run), "--out", str(tmp_path / "lb")]) == 0
    md = (tmp_path / "lb" / "sw.md").read_text()
    assert "## Sweeps" in md and "robust accuracy vs `steps`" in md
    assert "| steps = 10 | 25.0% [7.1%, 59.1%] | 62.5% [30.6%, 86.3%] |" in md
    assert (tmp_path / "lb" / "sw_sweep_pgd_linf-0.3.png").is_file()
    assert "sweep_pgd_linf-0.3.png" in {p.name for p in write_reports(run)}


def test_format_rate_is_the_wilson_interval_of_statsmodels() -> None:
    from statsmodels.stats.proportion import proportion_confint

    from robustgen_bench.report.render import MISSING, format_rate

    lo, hi = proportion_confint(3, 7, alpha=0.05, method="wilson")
    assert format_rate(3, 7) == f"{100 * 3 / 7:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    lo, hi = proportion_confint(99, 100, alpha=0.05, method="wilson")
    assert format_rate(99, 100, digits=2) == f"99.00% [{100 * lo:.2f}, {100 * hi:.2f}]"
    assert format_rate(5, 10, digits=0) == "50% [24, 76]"
    assert format_rate(0, 0) == MISSING
