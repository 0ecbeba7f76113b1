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


@dataclass(frozen=True)
class WarmStart:
    """The warm-started surrogate for iterative attacks (part of a cell's adaptive contract).

    Each call's inner optimisation starts, per sample and class, from the better of the previous
    call's solution and the defense's cheap initialisation (candidate search), and runs ``steps``
    steps instead of the defense's own. The previous solution is used only when the new batch has
    the same shape and every row lies within L2 distance ``radius`` of the same row of the
    previous call (consecutive steps of one attack path); any other call (another batch size, a
    new restart or random start, rows in another order) is a cold call: the full inference. Each
    EOT draw keeps its own warm chain. The verdict stays with the defense's full ``predict``.
    """

    steps: int = 5
    radius: float = 1.0

    def canonical(self) -> dict[str, float | int]:
        return {"warm_steps": self.steps, "radius": self.radius}


class Surrogate(nn.Module):
    """EOT-averaged differentiable view of a defense: (N, C, H, W) -> logits (N, K).

    Inside :meth:`reusing_solutions`, a call on the same input values as the previous call reuses
    that call's inner solutions (one per EOT draw) and recomputes only the differentiable part.
    Off by default: attacks that call the model repeatedly on one input *for fresh draws*
    (AutoAttack's EOT iterations) must not get the same draws back.
    """

    def __init__(self, defense: Defense, eot: int = 1, warm: WarmStart | None = None) -> None:
        super().__init__()
        self.defense = defense
        self.eot = max(1, int(eot))
        self.warm = warm
        self._reuse = False
        self._last: tuple[torch.Tensor, list[object]] | None = None
        #: Warm chains: the previous call's input (N, C, H, W) and one carried state per draw.
        self._chain: tuple[torch.Tensor, list[object]] | None = None
        #: Calls answered (cold, warm), for tests and benchmarks.
        self.calls = {"cold": 0, "warm": 0}

    def reset(self) -> None:
        """Forget every carried solution (a new restart or attack round starts cold)."""
        self._last = self._chain = None

    def _warm_states(self, xd: torch.Tensor) -> list[object] | None:
        """The carried states if xd continues the previous call's rows, else None (cold)."""
        if self._chain is None:
            return None
        prev, states = self._chain
        if prev.shape != xd.shape:
            return None
        assert self.warm is not None
        dist = (xd - prev).flatten(1).norm(dim=1)
        return states if bool((dist <= self.warm.radius).all()) else None

    def _warm_draws(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """EOT draws through the warm hook, or None when the defense offers no warm start."""
        assert self.warm is not None
        xd = x.detach()
        previous = self._warm_states(xd)
        draws, states = [], []
        for d in range(self.eot):
            out = self.defense.warm_solution(xd, None if previous is None else previous[d],
                                             self.warm.steps)
            if out is None:
                return None
            solution, state = out
            states.append(state)
            draws.append(self.defense.logits_at_solution(x, solution))
        self.calls["cold" if previous is None else "warm"] += 1
        self._chain = (xd.clone(), states)
        return draws

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
        draws = None
        if sols is not None:
            draws = [self.defense.logits_at_solution(x, sol) for sol in sols]
        elif self.warm is not None:
            draws = self._warm_draws(x)
        if draws is None:
            draws = [self.defense.surrogate_logits(x) for _ in range(self.eot)]
        # summed in draw order, then divided: the same arithmetic as runs already stored
        return sum(draws[1:], draws[0]) / self.eot
