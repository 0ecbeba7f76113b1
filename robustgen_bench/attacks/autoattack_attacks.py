"""AutoAttack adapter (fra31's code via PyPI ``pyautoattack``; see docs/DEPENDENCIES.md).

pyautoattack differs from the ``autoattack`` GitHub package: import name ``pyautoattack``,
keyword-only arguments after ``model``, ``attacks=`` instead of ``attacks_to_run`` (only with
``version='custom'``), and ``run_standard_evaluation(x, y, *, batch_size=)`` returns
``(x_adv, y_adv)``. Samples AutoAttack already finds misclassified are returned unchanged.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import nn

from robustgen_bench.attacks import register_attack
from robustgen_bench.attacks.base import Attack, AttackOutput
from robustgen_bench.attacks.params import LOGIT_SCALE_PARAM, Param
from robustgen_bench.errors import ConfigError
from robustgen_bench.threat import Threat

_SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
_NORMS = {Threat.LINF: "Linf", Threat.L2: "L2"}


@register_attack("autoattack", "AutoAttack")
class AutoAttack(Attack):
    """AutoAttack at a fixed epsilon (a bounded attack).

    ``version`` sets AutoAttack's own schedule (standard: APGD-CE, APGD-T, FAB-T, Square; rand:
    APGD-CE and APGD-DLR with EOT 20; plus: all six). The optional overrides below are applied
    after that schedule, for CPU budgets; null keeps AutoAttack's value. Note that the surrogate
    already averages ``eot`` draws of the defense, so APGD's ``eot_iter`` multiplies with it.
    """

    REVISION = 1  # logit_scale (default standardized): APGD-CE depends on the logit scale
    PARAMS = MappingProxyType({
        "version": Param("standard", str, "AutoAttack version",
                         choices=("standard", "plus", "rand")),
        "attacks": Param(None, list, "subset of the version's attacks to run, in order",
                         nullable=True, item_choices=_SUB_ATTACKS),
        "n_iter": Param(None, int, "iterations of APGD, APGD-T and FAB", nullable=True,
                        minimum=1),
        "n_restarts": Param(None, int, "restarts of APGD-CE/DLR and untargeted FAB",
                            nullable=True, minimum=1),
        "n_queries": Param(None, int, "queries of Square", nullable=True, minimum=1),
        "eot_iter": Param(None, int, "APGD's EOT iterations per gradient", nullable=True,
                          minimum=1),
        "n_target_classes": Param(None, int, "target classes of APGD-T and FAB-T",
                                  nullable=True, minimum=1),
        "logit_scale": LOGIT_SCALE_PARAM,
    })

    def _check_params(self) -> None:
        if self.params["attacks"] is not None and not self.params["attacks"]:
            raise ConfigError(f"{self._owner()}: 'attacks' may not be empty", key="attacks")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        from pyautoattack import AutoAttack as PyAutoAttack

        p = self.params
        aa = PyAutoAttack(model, eps=self.epsilon, norm=_NORMS[self.threat],
                          seed=self.next_seed(), version=p["version"], device=x.device)
        if p["attacks"] is not None:
            aa.attacks_to_run = list(p["attacks"])
        if p["n_iter"] is not None:
            aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = p["n_iter"]
        if p["n_restarts"] is not None:
            aa.apgd.n_restarts = aa.fab.n_restarts = p["n_restarts"]
        if p["n_queries"] is not None:
            aa.square.n_queries = p["n_queries"]
        if p["eot_iter"] is not None:
            aa.apgd.eot_iter = p["eot_iter"]
        if p["n_target_classes"] is not None:
            aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = p["n_target_classes"]
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(x))
        return AttackOutput(x_adv.detach(), flagged=(y_adv != y).cpu())
