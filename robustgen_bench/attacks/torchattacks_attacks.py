"""torchattacks adapters: EOTPGD and Square (imported lazily: torchattacks is optional)."""

from __future__ import annotations

import contextlib
import io
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from robustgen_bench.attacks import register_attack
from robustgen_bench.attacks.base import Attack, AttackOutput
from robustgen_bench.attacks.params import LOGIT_SCALE_PARAM, Param
from robustgen_bench.threat import Threat

LIBRARY = "torchattacks"


def _build(cls_name: str, model: nn.Module, x: torch.Tensor, **kwargs: Any) -> Any:
    import torchattacks

    with contextlib.redirect_stdout(io.StringIO()):  # it prints when the model has no parameters
        attack = getattr(torchattacks, cls_name)(model, **kwargs)
    attack.set_device(x.device)
    return attack


@register_attack(LIBRARY, "EOTPGD")
class EOTPGD(Attack):
    """torchattacks ``EOTPGD`` (Linf PGD averaging ``eot_iter`` gradients per step).

    ``alpha`` null means 2.5 * epsilon / steps (Madry et al.'s rule) rather than torchattacks'
    CIFAR default 2/255, which cannot leave a small ball on MNIST. The surrogate already averages
    the entry's ``eot`` draws; ``eot_iter`` multiplies with it.
    """

    THREATS = frozenset({Threat.LINF})
    REVISION = 1  # logit_scale (default standardized): torchattacks fixes the loss to CE
    PARAMS = MappingProxyType({
        "steps": Param(10, int, "gradient steps", minimum=1),
        "alpha": Param(None, float, "step size (null: 2.5 * epsilon / steps)", nullable=True,
                       minimum=0),
        "eot_iter": Param(2, int, "gradients averaged per step", minimum=1),
        "random_start": Param(True, bool, "start from a uniform point in the epsilon ball"),
        "restarts": Param(1, int, "random restarts; a sample is robust only if it survives all",
                          minimum=1),
        "logit_scale": LOGIT_SCALE_PARAM,
    })

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        p = self.params
        alpha = p["alpha"] if p["alpha"] is not None else 2.5 * self.epsilon / p["steps"]
        attack = _build("EOTPGD", model, x, eps=self.epsilon, alpha=alpha, steps=p["steps"],
                        eot_iter=p["eot_iter"], random_start=p["random_start"])
        return AttackOutput(attack(x, y).detach())


@register_attack(LIBRARY, "Square")
class Square(Attack):
    """torchattacks ``Square`` (score-based random search), Linf or L2 from the threat.

    Square only compares loss values of one sample, so its default margin loss is already
    unchanged by a positive rescaling of the logits (``ce`` is not).
    """

    PARAMS = MappingProxyType({
        "n_queries": Param(5000, int, "queries per restart", minimum=1),
        "n_restarts": Param(1, int, "Square's own restarts", minimum=1),
        "p_init": Param(0.8, float, "initial fraction of pixels changed", minimum=0),
        "loss": Param("margin", str, "loss", choices=("margin", "ce")),
        "resc_schedule": Param(True, bool, "rescale the p schedule to n_queries"),
    })

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        p = self.params
        attack = _build("Square", model, x, norm="Linf" if self.threat is Threat.LINF else "L2",
                        eps=self.epsilon, n_queries=p["n_queries"], n_restarts=p["n_restarts"],
                        p_init=p["p_init"], loss=p["loss"], resc_schedule=p["resc_schedule"],
                        seed=self.next_seed(), verbose=False)
        return AttackOutput(attack(x, y).detach())
