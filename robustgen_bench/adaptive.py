"""The adaptive-gradient contract: what attacks differentiate.

Each zoo entry declares ``adaptive: {gradient, randomized, eot}``. :class:`Surrogate` is the
``nn.Module`` handed to attack libraries: the mean over ``eot`` draws of the defense's
``surrogate_logits`` (expectation over transformation for randomized defenses).
"""

from __future__ import annotations

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


class Surrogate(nn.Module):
    """EOT-averaged differentiable view of a defense: (N, C, H, W) -> logits (N, K)."""

    def __init__(self, defense: Defense, eot: int = 1) -> None:
        super().__init__()
        self.defense = defense
        self.eot = max(1, int(eot))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.defense.surrogate_logits(x)
        for _ in range(self.eot - 1):
            out = out + self.defense.surrogate_logits(x)
        return out / self.eot
