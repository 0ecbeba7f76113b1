"""Threat models, converted once at the API boundary (like RobustBench's ThreatModel)."""

from __future__ import annotations

from enum import Enum

import torch


class Threat(str, Enum):
    """The norm an attack's budget is measured in."""

    LINF = "linf"
    L2 = "l2"

    @property
    def label(self) -> str:
        """Human label used in tables: 'L∞' or 'L2'."""
        return "L∞" if self is Threat.LINF else "L2"

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of ``delta`` (N, ...) -> (N,)."""
        flat = delta.reshape(delta.shape[0], -1)
        if self is Threat.LINF:
            return flat.abs().amax(dim=1)
        return flat.norm(p=2, dim=1)
