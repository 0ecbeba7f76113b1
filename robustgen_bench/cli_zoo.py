"""``rgbench zoo list|check`` and ``rgbench train``: thin wrappers that render library results.

Exit codes: 0 success, 1 a check failed, 2 bad input (UserInputError, message printed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from robustgen_bench.console import add_id_column, make_console
from robustgen_bench.errors import UserInputError
from robustgen_bench.records import check_list_format, records_csv, records_json

zoo_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="List and check model-zoo entries.")
console = make_console()
err_console = make_console(stderr=True)


def _user_error(e: UserInputError) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
    return typer.Exit(2)


@zoo_app.command("list")
def list_command(
    root: Annotated[Optional[Path], typer.Option(help="Zoo root (else $RGBENCH_ZOO or model_zoo/).")] = None,
    format: Annotated[str, typer.Option("--format", help="table | json | csv (for scripts).")] = "table",  # noqa: A002
) -> None:
    """Every zoo entry with its dataset, family and measured clean accuracy."""
    try:
        fmt = check_list_format(format)
    except UserInputError as e:
        raise _user_error(e) from None
    from robustgen_bench.zoo import LISTING_COLUMNS, listing, zoo_root

    base = root or zoo_root()
    rows = listing(base)
    if fmt == "json":
        typer.echo(records_json(rows), nl=False)
        return
    if fmt == "csv":
        typer.echo(records_csv(rows, LISTING_COLUMNS), nl=False)
        return
    table = Table(title=escape(f"model zoo ({base})"))
    add_id_column(table, "id", [r["id"] for r in rows])
    table.add_column("name", overflow="fold")
    add_id_column(table, "dataset", [r["dataset"] or "" for r in rows])
    for col in ("family", "randomized", "clean acc (n)"):
        table.add_column(col, overflow="fold")
    for r in rows:
        if r["error"] is not None:
            table.add_row(escape(r["id"]), f"[red]invalid: {escape(r['error'])}[/]", "", "", "", "")
            continue
        acc = r["clean_accuracy"]
        shown = f"{acc:.4f} ({r['n'] if r['n'] is not None else '?'})" if acc is not None else "-"
        table.add_row(escape(r["id"]), escape(r["name"]), r["dataset"], escape(r["family"]),
                      "yes" if r["randomized"] else "no", shown)
    console.print(table)


@zoo_app.command("check")
def check_command(
    ids: Annotated[Optional[list[str]], typer.Argument(help="Entry ids (default: all).")] = None,
    n: Annotated[int, typer.Option("--n", help="Test images for the clean-accuracy check.")] = 500,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root (else $RGBENCH_DATA).")] = None,
    root: Annotated[Optional[Path], typer.Option(help="Zoo root (else $RGBENCH_ZOO or model_zoo/).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Validate, verify sha256, load, compare clean accuracy, check gradients and randomness."""
    if n < 1:
        raise _user_error(UserInputError(f"expected a positive number, got {n}", key="--n"))
    from robustgen_bench.device import resolve_device
    from robustgen_bench.zoo_check import check_entries

    report = check_entries(ids or None, n=n, data_dir=data_dir, root=root,
                           device=resolve_device(device))
    table = Table(title="zoo check")
    add_id_column(table, "entry", [r.entry_id for r in report.results])
    add_id_column(table, "check", [r.check for r in report.results])
    for col in ("result", "message"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        table.add_row(escape(r.entry_id), escape(r.check), "[green]pass[/]" if r.ok else "[red]FAIL[/]",
                      escape(r.message))
    console.print(table)
    if not report.ok:
        failed = ", ".join(f"{r.entry_id}:{r.check}" for r in report.failures) or "no entries checked"
        err_console.print(f"[bold red]failed:[/] {escape(failed)}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]all {len(report.results)} checks passed")


@zoo_app.command("measure")
def measure_command(
    entry_id: Annotated[str, typer.Argument(help="Zoo entry id, e.g. mnist/cnn.")],
    n: Annotated[int, typer.Option("--n", help="First N test images.")] = 10000,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root (else $RGBENCH_DATA).")] = None,
    root: Annotated[Optional[Path], typer.Option(help="Zoo root (else $RGBENCH_ZOO or model_zoo/).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Measure deployed clean accuracy and record it in the entry's measured: block."""
    from robustgen_bench.device import resolve_device
    from robustgen_bench.zoo_check import measure_clean_accuracy

    try:
        acc = measure_clean_accuracy(entry_id, n=n, data_dir=data_dir, root=root,
                                     device=resolve_device(device), console=console)
    except UserInputError as e:
        raise _user_error(e) from None
    console.print(f"{entry_id}: clean accuracy {acc:.4f} on the first {n} test images (recorded)")


@zoo_app.command("new")
def new_command(
    entry_id: Annotated[str, typer.Argument(help="DATASET/NAME of the new entry, e.g. mnist/my-defense.")],
    family: Annotated[Optional[str], typer.Option(help="A registered family (rgbench zoo list shows them in use).")] = None,
    builder: Annotated[bool, typer.Option("--builder", help="Your own model.py (builder: model:build).")] = False,
    root: Annotated[Optional[Path], typer.Option(help="Zoo root (else $RGBENCH_ZOO or model_zoo/).")] = None,
) -> None:
    """Scaffold a zoo entry (entry.yaml, README.md, model.py for --builder); see docs/SUBMITTING.md."""
    from robustgen_bench.zoo_new import new_entry

    paths = new_entry(entry_id, family=family, builder=builder, root=root)  # UserInputError: exit 2
    for p in paths:
        console.print(f"wrote {p}", highlight=False)
    console.print(f"next: fill in the TODOs, then `rgbench zoo check {entry_id}` (docs/SUBMITTING.md)")


def train_command(
    entry_id: Annotated[str, typer.Argument(help="Zoo entry id, e.g. mnist/cnn.")],
    epochs: Annotated[Optional[int], typer.Option(help="Total epochs (default: train.epochs).")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Ignore existing checkpoints.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root (else $RGBENCH_DATA).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
    warm_start: Annotated[Optional[Path], typer.Option(
        "--warm-start", help="Weights after epoch train.warm_start.epoch (its sha256 is checked): "
                             "continue from them with fresh optimizer state instead of from scratch.")] = None,
) -> None:
    """Train ENTRY_ID with its recipe; writes weights.safetensors and updates its sha256."""
    from robustgen_bench.train import train_entry

    try:
        path = train_entry(entry_id, resume=not no_resume, epochs=epochs, data_dir=data_dir,
                           console=console, device=device, warm_start=warm_start)
    except UserInputError as e:
        raise _user_error(e) from None
    console.print(f"wrote {path}; re-measure with `rgbench zoo check {entry_id} --n 10000`")
