"""The defense interface every zoo family implements.

``predict`` is the deployed defense (full inference, fresh randomness, no gradients).
``surrogate_logits`` is one differentiable draw through the family's declared adaptive hook
(for ABS-like families: class losses at a detached optimum z*). Attacks never see a raw
defense: they get :class:`robustgen_bench.adaptive.Surrogate`, which averages
``surrogate_logits`` over the entry's EOT draws.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Defense(nn.Module, ABC):
    """A classifier on images in [0, 1].

    Shapes: inputs ``x`` are (N, C, H, W) float in [0, 1]; logits are (N, num_classes).
    """

    num_classes: int = 10
    #: True when ``predict`` draws fresh randomness on every call.
    randomized: bool = False

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Deployed inference: (N, C, H, W) -> logits (N, K). Called under ``torch.no_grad``."""

    def surrogate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """One differentiable draw of logits (N, K) via the adaptive hook.

        Default: the defense is differentiable end to end (``gradient: exact``).
        """
        return self.predict_with_grad(x)

    def inner_solution(self, x: torch.Tensor) -> object | None:
        """The non-differentiable part of one surrogate draw for x (N, C, H, W), or None.

        Families with an inner optimisation (ABS, GAN-ABS) return its detached result here, so
        that :meth:`logits_at_solution` can redo only the cheap differentiable part. Attacks that
        linearise the same input several times (DeepFool: one gradient per candidate class) reuse
        it through :meth:`robustgen_bench.adaptive.Surrogate.reusing_solutions`. None (the
        default) means the family has no such split.
        """
        return None

    def warm_solution(self, x: torch.Tensor, previous: object | None,
                      steps: int) -> tuple[object, object] | None:
        """A warm-started inner solution for x (N, C, H, W), or None (no warm start offered).

        Returns ``(solution, state)``: ``solution`` as :meth:`inner_solution` returns it (for
        :meth:`logits_at_solution`), ``state`` what a later call may pass back as ``previous``
        for inputs close to x, row for row. With ``previous`` None this is the full inference
        (same result as :meth:`inner_solution`); otherwise each (sample, class) starts from the
        better of ``previous`` and the cheap initialisation and runs ``steps`` steps.
        """
        return None

    def logits_at_solution(self, x: torch.Tensor, solution: object) -> torch.Tensor:
        """Differentiable logits (N, K) of x given ``inner_solution(x)``; only if that is not None."""
        raise NotImplementedError(f"{type(self).__name__} has no inner solution to reuse")

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable forward for end-to-end differentiable families; override as needed."""
        raise NotImplementedError(f"{type(self).__name__} defines no differentiable forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - nn.Module hook
        """Alias of :meth:`surrogate_logits` so the module plugs into attack libraries."""
        return self.surrogate_logits(x)
