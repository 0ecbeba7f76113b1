"""One check's verdict for one model and threat, and how verdicts combine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Verdicts, from best to worst. ``skip``: not applicable to this run (e.g. no black-box attack
#: in the suite); ``error``: the check could not be computed (the message says why).
STATUSES = ("pass", "skip", "warn", "fail", "error")
#: Verdicts that make ``rgbench checks`` exit 1.
BAD = frozenset({"warn", "fail", "error"})
ALL_THREATS = "all"


@dataclass(frozen=True)
class CheckResult:
    """``figure`` is the one-line number behind the verdict; ``detail`` the rest (JSON-able);
    ``cells`` the cell keys the check read or re-ran."""

    name: str
    model: str
    threat: str
    status: str
    figure: str
    detail: dict[str, Any] = field(default_factory=dict)
    cells: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}")

    @property
    def bad(self) -> bool:
        return self.status in BAD


def worst(statuses: list[str]) -> str:
    """The worst of ``statuses`` (``pass`` for none)."""
    return max(statuses, key=STATUSES.index, default="pass")
