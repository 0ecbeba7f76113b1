"""The ``rgbench`` command line: parse, call the library, render. No logic lives here.

Exit codes: 0 success, 1 runtime failure (clear message), 2 bad input (file, key, expectation).
``rgbench checks`` also exits 1 when a check warns or fails (0 when all pass).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from robustgen_bench.cli_usage import ClickException, UsageError, show_usage_error
from robustgen_bench.console import make_console
from robustgen_bench.errors import RuntimeFailure, UserInputError

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate adversarial-robustness defenses and build paper tables.")
console = make_console()
err_console = make_console(stderr=True)


@app.command()
def run(
    suite: Annotated[Path, typer.Argument(help="Attack suite YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. attacks.pgd-l2.steps=10")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate at most N samples.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Default: runs/<suite name>/")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root (else $RGBENCH_DATA).")] = None,
    executor: Annotated[str, typer.Option(help="Where batches run: local (this process), processes (one worker per core here) or ray.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join ('auto', 'ray://host:10001'); default: start Ray on this machine.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes, or CPUs of a Ray instance started here (default: all cores).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Run every (model × attack × budget) cell of SUITE, store per-sample results, print tables."""
    from robustgen_bench.config import load_suite
    from robustgen_bench.executors import make_executor
    from robustgen_bench.progress import RichProgress
    from robustgen_bench.runner import run_suite

    from robustgen_bench.device import resolve_device

    dev = resolve_device(device)
    s = load_suite(suite, overrides=set_ or [], limit=limit)
    out = run_dir or Path("runs") / s.name
    console.print(f"[bold]{s.name}[/]: {len(s.models)} models × {len(s.attacks)} attack budgets "
                  f"on {s.dataset.n} {s.dataset.name.value} {s.dataset.split} samples → {out}")
    bs = s.run.batch_size
    if s.limit is not None and s.dataset.n == s.limit and s.limit % bs:
        # a batch's randomness comes from its seed and its samples: a shorter last batch draws
        # other random starts than the full run's batch at the same position
        console.print(f"note: --limit {s.limit} ends inside a batch of {bs}; that batch draws other "
                      "randomness than the full run's, so a few of its rows may differ from it "
                      f"(--limit {bs * (s.limit // bs + 1)} reproduces them exactly; `rgbench compare`)",
                      highlight=False, markup=False)
    ex = make_executor(executor, address=ray_address, num_cpus=workers)
    if dev.type != "cpu":
        console.print(f"device: {dev}")
    # Ray workers each see the GPU Ray assigned them as "cuda"
    where = dev.type if executor == "ray" else str(dev)
    interrupted = False
    try:
        with RichProgress(console) as progress:
            run_suite(s, out, data_dir=data_dir, progress=progress.task, executor=ex,
                      device=where)
    except KeyboardInterrupt:
        interrupted = True  # stop the running batches now: their rows were not stored
        raise
    finally:
        ex.close(interrupted=interrupted)
    if s.checks.enabled:
        from robustgen_bench.checks.run import run_checks

        console.print(f"attack-failure checks (subsample {s.checks.subsample}; "
                      "`checks: false` in the suite turns them off)")
        # checks use the run's worker processes when it had them (Ray runs check in this process)
        check_workers = getattr(ex, "workers", 1) if executor == "processes" else 1
        run_checks(out, data_dir=data_dir, workers=check_workers,
                   log=lambda m: console.print(f"  {m}", highlight=False))
    _report(out)


def _report(run_dir: Path) -> None:
    try:
        report = importlib.import_module("robustgen_bench.report")
    except ModuleNotFoundError:
        return
    console.print(report.summary_table(run_dir))
    from robustgen_bench.report.outputs import checks_summary

    checks = checks_summary(run_dir)
    if checks is not None:
        console.print(checks)
    for p in report.write_reports(run_dir):
        console.print(f"wrote {p}")


@app.command()
def checks(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    subsample: Annotated[Optional[int], typer.Option(help="Samples per probe (default: the suite's checks.subsample).")] = None,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Only this check (repeatable).")] = None,
    recompute: Annotated[bool, typer.Option(help="Recompute stored results too.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root (else $RGBENCH_DATA).")] = None,
    workers: Annotated[int, typer.Option(help="Compute checks in this many worker processes.")] = 1,
) -> None:
    """Compute the attack-failure checks RUN_DIR is missing, store and print them all.

    Exit code 0 when every check passes (or does not apply), 1 when one warns or fails, 2 on bad
    input.
    """
    from robustgen_bench.checks.report import checks_rich, flagged_models
    from robustgen_bench.checks.run import run_checks
    from robustgen_bench.report.runs import RunDirError, load_runs

    if not run_dir.is_dir():
        raise RunDirError("run directory not found", file=run_dir)
    if subsample is not None and subsample < 1:
        raise UserInputError(f"expected a positive integer, got {subsample}", key="--subsample")
    if workers < 1:
        raise UserInputError(f"expected a positive integer, got {workers}", key="--workers")
    results = run_checks(run_dir, data_dir=data_dir, subsample=subsample, names=only,
                         recompute=recompute, workers=workers,
                         log=lambda m: err_console.print(m, highlight=False))
    if not results:
        console.print("no checks: the suite turned them off (checks: {enabled: false})")
        return
    runs = load_runs([run_dir])
    console.print(checks_rich(results, runs.display, runs.models, title=f"{run_dir}: attack-failure checks"))
    try:  # the run's tables, checks.md and caption now include the new results
        from robustgen_bench.report import write_reports

        write_reports(run_dir)
    except UserInputError as e:  # e.g. an unfinished run: its tables wait for the run
        err_console.print(f"reports not rewritten: {e}", highlight=False)
    bad = flagged_models(results, runs.models)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "skip", "warn", "fail", "error")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n), highlight=False)
    if bad:
        console.print("checks raised a warning for: " + ", ".join(runs.display(m) for m in bad),
                      highlight=False)
        raise typer.Exit(1)


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (may still be running).")],
    format: Annotated[str, typer.Option("--format", help="table | json | csv (for scripts).")] = "table",  # noqa: A002
) -> None:
    """How far RUN_DIR has got: stored samples and compute per cell, what can be tabulated now."""
    from robustgen_bench.records import check_list_format, records_csv, records_json
    from robustgen_bench.report.runs import RunDirError
    from robustgen_bench.report.status import (STATUS_COLUMNS, run_status, status_lines,
                                               status_payload, status_records, status_table)

    fmt = check_list_format(format)
    if not run_dir.is_dir():
        raise RunDirError("run directory not found", file=run_dir)
    st = run_status(run_dir)
    if fmt == "json":
        sys.stdout.write(records_json(status_payload(st, run_dir)))
    elif fmt == "csv":
        sys.stdout.write(records_csv(status_records(st), STATUS_COLUMNS))
    else:
        console.print(status_table(st, title=f"{run_dir}"))
        for line in status_lines(st, run_dir):
            console.print(line, highlight=False, markup=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds results.sqlite).")],
    format: Annotated[str, typer.Option("--format", help="csv (per-sample rows) or robustbench (model cards).")] = "csv",
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: stdout); a folder for robustbench.")] = None,
    threat: Annotated[Optional[str], typer.Option(help="robustbench: linf or l2 (default: the AutoAttack cells').")] = None,
    epsilon: Annotated[Optional[str], typer.Option(help="robustbench: the budget, e.g. 8/255 (default: the AutoAttack cells').")] = None,
) -> None:
    """Write the per-sample rows of RUN_DIR, or RobustBench model cards (--format robustbench)."""
    from robustgen_bench.export import export_csv

    if format == "robustbench":
        from robustgen_bench.model_cards import export_command

        export_command(run_dir, out, threat, epsilon, console=err_console)
        return
    if format != "csv":
        raise UserInputError(f"unknown format {format!r}; expected 'csv' or 'robustbench'", key="--format")
    text = export_csv(run_dir)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        err_console.print(f"wrote {out}")


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="A run directory or a rows CSV (`rgbench export`, a board's <name>_rows.csv).")],
    b: Annotated[Path, typer.Argument(help="The other run directory or rows CSV.")],
    format: Annotated[str, typer.Option("--format", help="table | json | csv (for scripts).")] = "table",  # noqa: A002
) -> None:
    """Pair the per-sample rows of A and B; exit 0 when every paired row agrees, 1 when some differ."""
    from robustgen_bench.compare import COMPARISON_COLUMNS, compare_rows, load_rows, rows_agree
    from robustgen_bench.records import check_list_format, records_csv, records_json
    from robustgen_bench.report.compare_view import comparison_lines, comparison_table

    fmt = check_list_format(format)
    cmp = compare_rows(load_rows(a), load_rows(b), names=(str(a), str(b)))
    if cmp.paired.sum() == 0:
        raise UserInputError(f"{a} and {b} hold no row of the same (model, attack, ε, sample); "
                             "expected two runs of the same suite (or a prefix of it)")
    records = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
               for r in cmp.to_dict(orient="records")]
    if fmt == "json":
        sys.stdout.write(records_json({"a": str(a), "b": str(b), "agree": rows_agree(cmp),
                                       "cells": records}))
    elif fmt == "csv":
        sys.stdout.write(records_csv(records, COMPARISON_COLUMNS))
    else:
        console.print(comparison_table(cmp, str(a), str(b)))
        for line in comparison_lines(cmp, str(a), str(b)):
            console.print(line, highlight=False, markup=False)
    if not rows_agree(cmp):
        raise typer.Exit(1)


def _register_optional() -> None:
    """Sub-commands whose modules belong to other areas (zoo, training, tables)."""
    try:
        from robustgen_bench.cli_zoo import train_command, zoo_app

        app.add_typer(zoo_app, name="zoo", help="List and check model-zoo entries.")
        app.command("train", help="Train a zoo entry from its recipe (checkpointed, resumable).")(
            train_command)
    except ModuleNotFoundError as e:
        if e.name != "robustgen_bench.cli_zoo":
            raise
    try:
        from robustgen_bench.report.cli_table import table_command

        app.command("table", help="Regenerate tables from stored runs (never runs an attack).")(
            table_command)
    except ModuleNotFoundError as e:
        if e.name not in ("robustgen_bench.report.cli_table", "robustgen_bench.report"):
            raise
    try:
        from robustgen_bench.report.cli_site import leaderboard_command, site_command

        app.command("leaderboard", help="Write committed boards (Markdown + LaTeX) from stored runs.")(
            leaderboard_command)
        app.command("site", help="Write a static leaderboard site from runs or boards.")(site_command)
    except ModuleNotFoundError as e:
        if e.name not in ("robustgen_bench.report.cli_site", "robustgen_bench.report"):
            raise


_register_optional()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[threading.Event]:
    """While the block runs, SIGTERM (``kill``, a batch system's time limit) raises
    ``KeyboardInterrupt`` where it has its default action and this is the main thread, so it
    takes Ctrl-C's path (running batches stopped, stored ones kept); yields an event set once
    SIGTERM arrived, which makes the exit code 143. The previous handler is restored after."""
    seen = threading.Event()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield seen  # an ignored or already handled SIGTERM stays as its owner set it
        return

    def on_sigterm(signum: int, frame: object) -> None:
        seen.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point with the exit-code contract.

    0 done, 1 runtime failure, 2 bad input (a usage error, a bad file or value), 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM). ``standalone_mode=False`` makes click *return* the code of
    ``typer.Exit`` instead of exiting, so it is passed on here; usage errors are raised, and
    shown with the usage line.
    """
    with _sigterm_as_interrupt() as terminated:
        return _main(argv, terminated)


def _main(argv: list[str] | None, terminated: threading.Event) -> int:
    try:
        code = app(args=argv, prog_name="rgbench", standalone_mode=False)
    except UserInputError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    except RuntimeFailure as e:
        err_console.print(f"[bold red]runtime failure:[/] {escape(str(e))}", highlight=False)
        return 1
    except UsageError as e:  # NoSuchOption, BadParameter, MissingParameter, NoArgsIsHelp, ...
        show_usage_error(e, app, sys.argv[1:] if argv is None else list(argv), "rgbench")
        return 2
    except ClickException as e:  # e.g. FileError
        e.show()
        return int(getattr(e, "exit_code", 1))
    except typer.Exit as e:  # raised outside click's main
        return int(e.exit_code or 0)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except Exception as e:  # noqa: BLE001 - the exit-code contract: a clear message, code 1
        if os.environ.get("RGBENCH_DEBUG"):
            raise
        err_console.print(f"[bold red]runtime failure:[/] {escape(f'{type(e).__name__}: {e}')}\n"
                          "(set RGBENCH_DEBUG=1 for the traceback)", highlight=False)
        return 1
    if code == 130:  # typer turns Ctrl-C (and so SIGTERM) into Exit(130)
        what = "terminated (SIGTERM)" if terminated.is_set() else "interrupted"
        err_console.print(f"{what}; finished batches are stored, re-run the same command to resume")
        return 143 if terminated.is_set() else 130
    # A command's return value (None), or the code of a typer.Exit that click caught and returned.
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
