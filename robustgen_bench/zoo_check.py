"""``rgbench zoo check``: the checks a reviewer trusts before an entry enters a leaderboard.

Per entry, in order (a failed step skips the steps that need it):

1. ``schema``      entry.yaml parses and validates (:func:`robustgen_bench.zoo.parse_entry`).
2. ``sha256``      every weights file exists and matches its declared sha256.
3. ``load``        the family (or the folder's ``builder``) builds and the weights load strictly.
4. ``clean_accuracy`` deployed ``predict`` on the first ``n`` test images agrees with
   ``measured.clean_accuracy`` within 3 binomial standard errors (sqrt(p(1-p)/n) at the measured
   p) + 1 percentage point, the slack for the first ``n`` images not being a random sample.
5. ``gradient``    ``adaptive.Surrogate`` with the entry's eot gives finite input gradients of the
   margin (true logit minus best other logit) that are non-zero for every checked image.
6. ``randomness``  a randomized entry declares eot >= 2; a deterministic one returns identical
   logits from two ``predict`` calls.

Broken entries never raise: each problem becomes a failed row with the error message.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from robustgen_bench.errors import UserInputError, ZooError
from robustgen_bench.zoo import ZooEntry, build_defense, entry_ids, fetch_weights, parse_entry, zoo_root

GRADIENT_SAMPLES = 8


@dataclass(frozen=True)
class CheckResult:
    """One check of one entry."""

    entry_id: str
    check: str
    ok: bool
    message: str


@dataclass
class CheckReport:
    """All check rows; ``ok`` when every row passed (and there is at least one)."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def add(self, entry_id: str, check: str, ok: bool, message: str) -> bool:
        self.results.append(CheckResult(entry_id, check, ok, message))
        return ok


def accuracy_tolerance(p: float, n: int) -> float:
    """Allowed |observed - measured| accuracy: 3 binomial standard errors at p, plus 0.01."""
    return 3.0 * math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1)) + 0.01


def _guard(report: CheckReport, entry_id: str, check: str, fn: Callable[[], tuple[bool, str]]) -> bool:
    """Run one check; any exception becomes a failed row (no traceback reaches the user)."""
    try:
        ok, msg = fn()
    except UserInputError as e:
        ok, msg = False, str(e)
    except Exception as e:  # noqa: BLE001 - a user's builder may raise anything
        ok, msg = False, f"{type(e).__name__}: {e}"
    return report.add(entry_id, check, ok, msg)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample logit margin (N,): true class minus the best other class."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.max(1).values


def check_entry(entry_id: str, report: CheckReport, n: int, root: Path,
                data: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
                device: str | torch.device = "cpu") -> None:
    """Append the rows of every check of ``entry_id`` to ``report``."""
    from robustgen_bench.adaptive import Surrogate

    state: dict[str, Any] = {}

    def schema() -> tuple[bool, str]:
        state["entry"] = parse_entry(root / entry_id / "entry.yaml", root)
        return True, "entry.yaml is valid"

    if not _guard(report, entry_id, "schema", schema):
        return
    entry: ZooEntry = state["entry"]

    def sha() -> tuple[bool, str]:
        if not entry.weights:
            return True, "no weights files declared"
        paths = fetch_weights(entry)
        return True, f"{len(paths)} file(s) verified"

    if not _guard(report, entry_id, "sha256", sha):
        return

    def load() -> tuple[bool, str]:
        state["defense"] = build_defense(entry).to(device)
        return True, f"built {type(state['defense']).__name__}, weights loaded strictly"

    if not _guard(report, entry_id, "load", load):
        return
    defense = state["defense"]

    def clean() -> tuple[bool, str]:
        measured = entry.measured.get("clean_accuracy")
        if not isinstance(measured, (int, float)) or isinstance(measured, bool):
            raise ZooError("expected a number (the measured clean accuracy; "
                           f"`rgbench zoo measure {entry.id}` records it)",
                           file=entry.entry_file, key="measured.clean_accuracy")
        x, y = data(entry.dataset)
        x, y = x[:n], y[:n]
        correct = 0
        with torch.no_grad():
            for i in range(0, len(y), 250):
                correct += int((defense.predict(x[i:i + 250]).argmax(1) == y[i:i + 250]).sum())
        acc = correct / len(y)
        tol = accuracy_tolerance(float(measured), len(y))
        ok = abs(acc - measured) <= tol
        return ok, (f"{acc:.4f} on the first {len(y)} test images vs measured {measured:.4f} "
                    f"(tolerance ±{tol:.4f})")

    _guard(report, entry_id, "clean_accuracy", clean)

    def gradient() -> tuple[bool, str]:
        x, y = data(entry.dataset)
        x = x[:GRADIENT_SAMPLES].clone().requires_grad_(True)
        sur = Surrogate(defense, entry.adaptive.eot)
        (g,) = torch.autograd.grad(_margin(sur(x), y[:GRADIENT_SAMPLES]).sum(), x)
        if not torch.isfinite(g).all():
            return False, "non-finite input gradients"
        zero = int((g.flatten(1).abs().sum(1) == 0).sum())
        if zero:
            return False, f"zero input gradient for {zero}/{len(g)} images"
        return True, (f"finite, non-zero on {len(g)} images (eot={entry.adaptive.eot}, "
                      f"hook={entry.adaptive.gradient.value})")

    _guard(report, entry_id, "gradient", gradient)

    def randomness() -> tuple[bool, str]:
        if entry.adaptive.randomized:
            ok = entry.adaptive.eot >= 2
            return ok, f"randomized with eot={entry.adaptive.eot}" + ("" if ok else "; expected eot >= 2")
        x, _ = data(entry.dataset)
        x = x[:GRADIENT_SAMPLES]
        with torch.no_grad():
            same = torch.equal(defense.predict(x), defense.predict(x))
        return same, ("deterministic: two predict calls agree" if same else
                      "declared randomized: false but two predict calls differ")

    _guard(report, entry_id, "randomness", randomness)


def check_entries(ids: list[str] | None, n: int = 500, data_dir: str | Path | None = None,
                  root: Path | None = None, device: str | torch.device = "cpu") -> CheckReport:
    """Check ``ids`` (all entries under the zoo root when None); never raises for a broken entry.

    ``device``: where the defenses and images live (the checks' verdicts do not depend on it
    beyond floating-point round-off)."""
    from robustgen_bench.data import load_tensors

    root = root or zoo_root()
    report = CheckReport()
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def data(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
        if dataset not in cache:
            x, y = load_tensors(dataset, "test", data_dir)
            cache[dataset] = (x.to(device), y.to(device))
        return cache[dataset]

    for entry_id in ids if ids is not None else entry_ids(root):
        if not (root / entry_id / "entry.yaml").is_file():
            from robustgen_bench.errors import did_you_mean

            report.add(entry_id, "schema", False,
                       f"unknown zoo entry {entry_id!r}.{did_you_mean(entry_id, entry_ids(root))}")
            continue
        check_entry(entry_id, report, n, root, data, device)
    return report


def measure_clean_accuracy(entry_id: str, *, n: int = 10000, data_dir: str | Path | None = None,
                           root: Path | None = None, write: bool = True,
                           console: Console | None = None, batch_size: int = 100,
                           device: str | torch.device = "cpu") -> float:
    """Deployed ``predict`` accuracy on the first ``n`` test images; optionally recorded in entry.yaml.

    Writing rewrites the ``clean_accuracy:``, ``n:`` and ``command:`` values of the ``measured:``
    block as text, so comments and key order survive. With a ``console`` a progress bar shows
    images/s (ABS-family inference runs at a few images per second per core).
    """
    import re

    from robustgen_bench.data import load_tensors
    from robustgen_bench.progress import RichProgress
    from robustgen_bench.zoo import get_entry

    root = root or zoo_root()
    entry = get_entry(entry_id, root)
    defense = build_defense(entry).to(device)
    x, y = load_tensors(entry.dataset, "test", data_dir)
    x, y = x[:n].to(device), y[:n].to(device)
    correct = 0
    with contextlib.ExitStack() as stack:
        bar = None
        if console is not None:
            bar = stack.enter_context(RichProgress(console)).task(f"{entry_id} clean", len(y), 0)
        with torch.no_grad():
            for i in range(0, len(y), batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                correct += int((defense.predict(xb).argmax(1) == yb).sum())
                if bar is not None:
                    bar.advance(len(yb))
    acc = correct / len(y)
    if write:
        text = entry.entry_file.read_text()
        measured = re.compile(r"^measured:.*?(?=^\S|\Z)", flags=re.M | re.S)
        if measured.search(text) is None:
            # A new entry has no block yet: append one rather than lose the measurement.
            text = text.rstrip("\n") + "\nmeasured:\n  clean_accuracy: null\n  n: 0\n  split: test\n  command: null\n"
        block = measured.search(text)
        body = re.sub(r"(clean_accuracy:\s*)(null|[0-9.eE+-]+)", rf"\g<1>{acc:.4f}", block.group(0), count=1)
        body = re.sub(r"(\bn:\s*)(\d+)", rf"\g<1>{len(y)}", body, count=1)
        body = re.sub(r"(\bcommand:\s*).*", rf'\g<1>"rgbench zoo measure {entry_id} --n {len(y)}"', body, count=1)
        entry.entry_file.write_text(text[:block.start()] + body + text[block.end():])
    return acc
