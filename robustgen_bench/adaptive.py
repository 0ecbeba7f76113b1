"""The adaptive-gradient contract: what attacks differentiate.

Each zoo entry declares ``adaptive: {gradient, randomized, eot}``. :class:`Surrogate` is the
``nn.Module`` handed to attack libraries: the mean over ``eot`` draws of the defense's
``surrogate_logits`` (expectation over transformation for randomized defenses).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from robustgen_bench.defenses.base import Defense


class GradientHook(str, Enum):
    """How a defense exposes input gradients to attacks."""

    EXACT = "exact"  # end-to-end differentiable
    DETACHED_ZSTAR = "detached_zstar"  # inner optimisation detached at its optimum z*
    BPDA_IDENTITY = "bpda_identity"  # non-differentiable preprocessing approximated by identity
    ESTIMATE = "estimate"  # no analytic gradient: attacks must estimate it


@dataclass(frozen=True)
class AdaptiveSpec:
    """An entry's declared adaptive hook."""

    gradient: GradientHook
    randomized: bool
    eot: int = 1

    def canonical(self) -> dict[str, str | bool | int]:
        """Plain-data form for hashing and manifests (cell keys, entry fingerprints)."""
        return {"gradient": self.gradient.value, "eot": self.eot, "randomized": self.randomized}


class Surrogate(nn.Module):
    """EOT-averaged differentiable view of a defense: (N, C, H, W) -> logits (N, K).

    Inside :meth:`reusing_solutions`, a call on the same input values as the previous call reuses
    that call's inner solutions (one per EOT draw) and recomputes only the differentiable part.
    Off by default: attacks that call the model repeatedly on one input *for fresh draws*
    (AutoAttack's EOT iterations) must not get the same draws back.
    """

    def __init__(self, defense: Defense, eot: int = 1) -> None:
        super().__init__()
        self.defense = defense
        self.eot = max(1, int(eot))
        self._reuse = False
        self._last: tuple[torch.Tensor, list[object]] | None = None

    @contextlib.contextmanager
    def reusing_solutions(self) -> Iterator[Surrogate]:
        """Reuse inner solutions across consecutive calls on identical inputs, within the block."""
        self._reuse, self._last = True, None
        try:
            yield self
        finally:
            self._reuse, self._last = False, None

    def _solutions(self, x: torch.Tensor) -> list[object] | None:
        xd = x.detach()
        if self._last is not None and self._last[0].shape == xd.shape and torch.equal(self._last[0], xd):
            return self._last[1]
        first = self.defense.inner_solution(xd)
        if first is None:
            return None
        sols = [first] + [self.defense.inner_solution(xd) for _ in range(self.eot - 1)]
        self._last = (xd.clone(), sols)
        return sols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sols = self._solutions(x) if self._reuse else None
        if sols is not None:
            draws = [self.defense.logits_at_solution(x, sol) for sol in sols]
        else:
            draws = [self.defense.surrogate_logits(x) for _ in range(self.eot)]
        # summed in draw order, then divided: the same arithmetic as runs already stored
        return sum(draws[1:], draws[0]) / self.eot
