"""Attack losses and the logit standardisation that make gradient attacks scale-free.

A defense's logits are only defined up to a positive rescaling that leaves every prediction
unchanged: ABS-family logits are minus class scores divided by the number of pixels, so two classes
differ by hundredths. Cross-entropy on such logits spreads its gradient over all classes, and CW's
margin term vanishes next to its distance term. Two remedies, both chosen per attack in the suite:

* ``loss`` (where the library takes a loss): ``margin`` (max other logit minus the true one) and
  ``dlr`` (Croce & Hein 2020) give the same step direction for any positive rescaling under the
  normalised steps of L2 / Linf PGD; ``ce`` is the libraries' default and is not scale-free.
* ``logit_scale: standardized`` (attacks whose library fixes the loss: DDN, CW, EOTPGD,
  AutoAttack's APGD-CE): the library sees each sample's logits divided by their standard deviation
  over classes, so any positive rescaling of the defense's logits gives the same numbers up to
  round-off. It is an ordinary differentiable function of the input (gradients flow through the
  standard deviation too), and the argmax, so every library success flag, is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: The losses an adapter may offer; higher means more adversarial (untargeted).
LOSSES = ("ce", "margin", "dlr")
LOGIT_SCALES = ("standardized", "raw")


def _true_and_best_other(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) true-class logit and (n,) largest other logit of logits (n, K), labels y (n,)."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true, other.amax(dim=1)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) max_{j != y} z_j - z_y: positive exactly where the logits misclassify."""
    true, other = _true_and_best_other(logits, y)
    return other - true


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) untargeted DLR loss -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), K >= 3."""
    top = logits.sort(dim=1, descending=True).values
    return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) cross-entropy (the libraries' default; depends on the logit scale)."""
    return nn.functional.cross_entropy(logits, y, reduction="none")


_LOSS_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-sample loss called ``name`` (one of :data:`LOSSES`)."""
    return _LOSS_FNS[name]


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """logits (n, K) divided per row by their standard deviation over classes.

    The variance is floored at 1e-30 (far below any defense's logit spread) so that rows of equal
    logits give finite values and gradients.
    """
    return logits / logits.var(dim=1, keepdim=True).clamp_min(1e-30).sqrt()


class StandardizedLogits(nn.Module):
    """Wraps a model (n, C, H, W) -> logits (n, K) so that it returns :func:`standardize`'d logits.

    Keeps the wrapped module's ``training`` flag in sync (libraries read it) and exposes it as
    ``inner`` for adapters that need the surrogate itself.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.training = inner.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return standardize(self.inner(x))
