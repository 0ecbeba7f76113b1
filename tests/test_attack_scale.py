"""Gradient attacks do not depend on the logit scale, and PGD keeps its best iterate.

A defense's logits multiplied by a positive constant make the same predictions; an honest attack
must then produce the same rows (ABS-family logits are class scores divided by the pixel count,
a factor 1/784 that made cross-entropy PGD, DDN and CW weak on them).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
import torch
from torch import nn

from robustgen_bench.adaptive import AdaptiveSpec, GradientHook
from robustgen_bench.attacks import AttackSpec, get_attack_class, make_attack
from robustgen_bench.attacks.losses import dlr_loss, margin_loss, standardize
from robustgen_bench.defenses.base import Defense
from robustgen_bench.errors import ConfigError
from robustgen_bench.threat import Threat

EXACT = AdaptiveSpec(GradientHook.EXACT, randomized=False, eot=1)
N = 12


class Scaled(Defense):
    """A deterministic defense whose logits are ``factor`` times those of ``m``."""

    def __init__(self, m: nn.Module, factor: float) -> None:
        super().__init__()
        self.m, self.factor = m, factor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.predict_with_grad(x)

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x) * self.factor


def _make(library: str, name: str, threat: Threat, eps: float, params: dict[str, Any]):
    return make_attack(AttackSpec(id="a", library=library, attack=name, threat=threat,
                                  epsilon=eps, params=MappingProxyType(params), seed=1))


#: Every adapter that follows gradients of logit values, at its scale-free default.
GRADIENT_ATTACKS = [
    ("foolbox", "L2PGD", Threat.L2, 1.0, {"steps": 10, "rel_stepsize": 0.25}),
    ("foolbox", "LinfPGD", Threat.LINF, 0.1, {"steps": 10, "rel_stepsize": 0.25}),
    ("foolbox", "DDNAttack", Threat.L2, 1.0, {"steps": 15}),
    ("foolbox", "L2CarliniWagnerAttack", Threat.L2, 1.0,
     {"steps": 20, "binary_search_steps": 2, "initial_const": 1.0}),
    ("torchattacks", "EOTPGD", Threat.LINF, 0.1, {"steps": 5, "eot_iter": 1}),
    ("autoattack", "AutoAttack", Threat.LINF, 0.1, {"attacks": ["apgd-ce"], "n_iter": 5}),
]


@pytest.mark.parametrize("library,name,threat,eps,params", GRADIENT_ATTACKS,
                         ids=[f"{a[0]}-{a[1]}" for a in GRADIENT_ATTACKS])
def test_rows_do_not_change_when_logits_are_multiplied_by_1000(
        library, name, threat, eps, params, tiny_cnn, mnist_test_small):
    x, y = mnist_test_small[0][:N], mnist_test_small[1][:N]
    rows = {}
    for factor in (1.0, 1000.0):
        defense = Scaled(tiny_cnn, factor).eval()
        clean = defense.predict(x).argmax(1)
        rows[factor] = _make(library, name, threat, eps, params)(
            defense, EXACT, x, y, list(range(N)), clean)
    a, b = rows[1.0], rows[1000.0]
    assert [(r.adv_correct, r.adv_pred) for r in a] == [(r.adv_correct, r.adv_pred) for r in b]
    for ra, rb in zip(a, b):
        assert (ra.distance is None) == (rb.distance is None)
        if ra.distance is not None:
            assert ra.distance == pytest.approx(rb.distance, rel=1e-3, abs=1e-4)
    # the check has teeth: the attack breaks some samples and leaves others
    assert 0 < sum(not r.adv_correct for r in a if r.clean_pred == r.label)


def test_cross_entropy_on_raw_logits_does_depend_on_the_scale(tiny_cnn, mnist_test_small):
    """What the scale-free defaults are for: CE-PGD on logits / 784 (ABS's scale) moves
    differently from CE-PGD on the same logits times 1000."""
    x, y = mnist_test_small[0][:N], mnist_test_small[1][:N]
    adv = {}
    for factor in (1 / 784, 1000.0):
        defense = Scaled(tiny_cnn, factor).eval()
        attack = _make("foolbox", "L2PGD", Threat.L2, 1.0,
                       {"steps": 10, "rel_stepsize": 0.25, "loss": "ce", "best_iterate": False})
        attack(defense, EXACT, x, y, list(range(N)), defense.predict(x).argmax(1))
        adv[factor] = attack.last_x_adv
    assert not torch.allclose(adv[1 / 784], adv[1000.0], atol=1e-3)


def test_losses_against_their_definitions():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, 0.0]])
    y = torch.tensor([0, 0])
    assert margin_loss(logits, y).tolist() == [1.0 - 3.0, 2.0 - 0.0]
    # DLR: margin / (z_pi1 - z_pi3)
    assert dlr_loss(logits, y).tolist() == pytest.approx([-2.0 / 2.5, 2.0 / 2.0])
    z = standardize(logits * 1234.5)
    assert torch.allclose(z, standardize(logits), atol=1e-5)
    assert torch.allclose(z.std(dim=1), torch.ones(2))
    flat = torch.zeros(1, 4, requires_grad=True)  # equal logits: finite values and gradients
    standardize(flat).sum().backward()
    assert torch.isfinite(flat.grad).all()


class Overshoot(Defense):
    """A 10-class defense with a narrow adversarial band along one direction.

    s = sum(x - ref); class 1's logit is 0.1 - |s - 1|, the true class 0 has logit 0, the rest
    -10. PGD-L2 without random start and a step that moves s by 1.05 jumps into the band
    (s = 1.05, adversarial) and the next step jumps back out (s = 0): the last iterate is not
    adversarial, the first one was.
    """

    def __init__(self, ref: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ref", ref)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.predict_with_grad(x)

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        s = (x - self.ref).flatten(1).sum(dim=1)
        out = torch.full((len(x), 10), -10.0)
        out = out.index_put((torch.arange(len(x)), torch.zeros(len(x), dtype=torch.long)),
                            torch.zeros(len(x)))
        band = 0.1 - (s - 1.0).abs()
        return torch.cat([out[:, :1], band.view(-1, 1), out[:, 2:]], dim=1)


@pytest.mark.parametrize("best", [True, False])
def test_pgd_keeps_an_adversarial_iterate_that_later_steps_lost(best):
    ref = torch.full((1, 1, 28, 28), 0.5)
    defense = Overshoot(ref).eval()
    x, y = ref.clone(), torch.tensor([0])
    assert defense.predict(x).argmax(1).tolist() == [0]
    attack = _make("foolbox", "L2PGD", Threat.L2, 5.0,
                   {"steps": 2, "abs_stepsize": 1.05 / 28, "random_start": False,
                    "best_iterate": best})
    (row,) = attack(defense, EXACT, x, y, [0], torch.tensor([0]))
    # the last iterate is back at s = 0 (the attack's own output is not adversarial) ...
    # ... and only best-iterate tracking reports the break at s = 1.05
    assert row.adv_correct is (not best)
    if best:
        assert row.adv_pred == 1 and row.distance == pytest.approx(1.05 / 28, rel=1e-4)


def test_loss_is_validated_and_changed_adapters_get_new_cell_keys():
    with pytest.raises(ConfigError) as e:
        _make("foolbox", "L2PGD", Threat.L2, 1.0, {"loss": "margn"})
    assert e.value.key == "loss"
    spec = AttackSpec("a", "foolbox", "L2PGD", Threat.L2, 1.0)
    assert spec.canonical()["revision"] == get_attack_class("foolbox", "L2PGD").REVISION == 1
    # adapters whose behaviour did not change keep the keys of stored runs
    assert "revision" not in AttackSpec("a", "foolbox", "L2DeepFoolAttack", Threat.L2,
                                        1.0).canonical()
