"""Every registered adapter, run for real on the tiny MNIST CNN with small budgets."""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any

import pytest
import torch
from torch import nn

from robustgen_bench.adaptive import AdaptiveSpec, GradientHook
from robustgen_bench.attacks import AttackSpec, attack_names, make_attack
from robustgen_bench.defenses.base import Defense
from robustgen_bench.store import ResultRow
from robustgen_bench.threat import Threat

EXACT = AdaptiveSpec(GradientHook.EXACT, randomized=False, eot=1)


N = 12

#: (library, attack) -> (threat, epsilon, small params). Every registered attack must be here.
CONFIGS: dict[tuple[str, str], tuple[Threat, float, dict[str, Any]]] = {
    ("foolbox", "LinfPGD"): (Threat.LINF, 0.3, {"steps": 10, "restarts": 2}),
    ("foolbox", "L2PGD"): (Threat.L2, 1.5, {"steps": 10, "rel_stepsize": 0.25}),
    ("foolbox", "LinfESPGD"): (Threat.LINF, 0.3, {"steps": 10, "samples": 10,
                                                  "rel_stepsize": 0.1}),
    ("foolbox", "L2ESPGD"): (Threat.L2, 1.5, {"steps": 10, "samples": 10, "rel_stepsize": 0.25}),
    ("foolbox", "LinfPGDSearch"): (Threat.LINF, 0.3, {"steps": 5, "grid": 4}),
    ("foolbox", "L2PGDSearch"): (Threat.L2, 1.5, {"steps": 5, "grid": 4}),
    ("foolbox", "DDNAttack"): (Threat.L2, 1.5, {"steps": 20}),
    ("foolbox", "L2CarliniWagnerAttack"): (Threat.L2, 1.5, {"steps": 30, "binary_search_steps": 3,
                                                            "initial_const": 1.0}),
    ("foolbox", "LinfDeepFoolAttack"): (Threat.LINF, 0.3, {"steps": 20}),
    ("foolbox", "L2DeepFoolAttack"): (Threat.L2, 1.5, {"steps": 20}),
    ("foolbox", "BoundaryAttack"): (Threat.L2, 1.5, {"steps": 100}),
    ("foolbox", "GaussianNoise"): (Threat.L2, 1.5, {"levels": 20, "repeats": 3}),
    ("autoattack", "AutoAttack"): (Threat.LINF, 0.3, {"attacks": ["apgd-ce", "apgd-t"],
                                                      "n_iter": 5, "n_target_classes": 2}),
    ("torchattacks", "EOTPGD"): (Threat.LINF, 0.3, {"steps": 5, "eot_iter": 1}),
    ("torchattacks", "Square"): (Threat.L2, 1.5, {"n_queries": 50}),
}


def make(library: str, name: str, threat: Threat, eps: float, params: dict[str, Any],
         seed: int = 0):
    return make_attack(AttackSpec(id=f"{library}-{name}", library=library, attack=name,
                                  threat=threat, epsilon=eps, params=MappingProxyType(params),
                                  seed=seed))


def check_rows(rows: list[ResultRow], y: torch.Tensor, clean: torch.Tensor, idx: list[int],
               eps: float, minimal: bool) -> None:
    """The row contract every attack must meet."""
    assert [r.sample_index for r in rows] == idx
    for r, label, c in zip(rows, y.tolist(), clean.tolist()):
        assert r.label == label and r.clean_pred == c
        assert r.adv_correct == (r.adv_pred == label)
        assert r.violation is None
        if c != label:
            assert r.distance == 0.0 and not r.adv_correct
        elif not r.adv_correct:  # a verified adversarial within budget
            assert r.distance is not None and 0 < r.distance <= eps + 1e-6
            assert len(r.draws) == 1 and r.draws[0] == r.adv_pred
        elif r.distance is not None:  # only minimal-norm attacks report misses' distances
            assert minimal and r.distance > eps


def test_every_registered_attack_has_a_test_config():
    assert sorted(CONFIGS) == attack_names()


@pytest.mark.parametrize("key", sorted(CONFIGS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_adapter_runs_and_meets_row_contract(key, tiny_defense, mnist_test_small):
    x, y = mnist_test_small[0][:N], mnist_test_small[1][:N]
    threat, eps, params = CONFIGS[key]
    attack = make(*key, threat, eps, params)
    clean = tiny_defense.predict(x).argmax(1)
    rows = attack(tiny_defense, EXACT, x, y, list(range(100, 100 + N)), clean)
    check_rows(rows, y, clean, list(range(100, 100 + N)), eps, attack.MINIMAL_NORM)
    if attack.MINIMAL_NORM:  # minimal-norm attacks find some adversarial for most samples
        assert sum(r.distance is not None for r in rows) >= N // 2


def test_linf_pgd_breaks_the_tiny_cnn_at_0_3(tiny_defense, mnist_test_small):
    x, y = mnist_test_small[0][:16], mnist_test_small[1][:16]
    clean = tiny_defense.predict(x).argmax(1)
    attack = make("foolbox", "LinfPGD", Threat.LINF, 0.3, {"steps": 20})
    rows = attack(tiny_defense, EXACT, x, y, list(range(16)), clean)
    assert sum(r.adv_correct for r in rows) <= 2
    # a tiny budget leaves it mostly robust: the same code path can report robustness
    weak = make("foolbox", "LinfPGD", Threat.LINF, 0.02, {"steps": 20})
    assert sum(r.adv_correct for r in weak(tiny_defense, EXACT, x, y, list(range(16)),
                                            clean)) >= 10
    # seeded: the same spec and indices give the same rows
    assert attack(tiny_defense, EXACT, x, y, list(range(16)), clean) == rows


def test_restarts_never_lower_the_success_count(tiny_defense, mnist_test_small):
    x, y = mnist_test_small[0][:16], mnist_test_small[1][:16]
    clean = tiny_defense.predict(x).argmax(1)
    one = make("foolbox", "L2PGD", Threat.L2, 1.0, {"steps": 5, "restarts": 1})
    three = make("foolbox", "L2PGD", Threat.L2, 1.0, {"steps": 5, "restarts": 3})
    r1 = one(tiny_defense, EXACT, x, y, list(range(16)), clean)
    r3 = three(tiny_defense, EXACT, x, y, list(range(16)), clean)
    # restart 1 of `three` is the run of `one` (same seed stream): every break survives
    assert all(not b.adv_correct for a, b in zip(r1, r3) if not a.adv_correct)
    assert sum(r.adv_correct for r in r3) <= sum(r.adv_correct for r in r1)


def test_foolbox_cw_zero_images_are_caught(tiny_defense, mnist_test_small):
    """foolbox's CW with too few steps returns all-zero images flagged as successes; the base
    class re-measures them (distance ||x||, robust at epsilon) and re-verifies them."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import foolbox

    x, y = mnist_test_small[0][:N], mnist_test_small[1][:N]
    params = {"steps": 5, "binary_search_steps": 1}
    fmodel = foolbox.PyTorchModel(tiny_defense, bounds=(0, 1))
    raw, _, success = foolbox.attacks.L2CarliniWagnerAttack(**params)(fmodel, x, y, epsilons=None)
    zero = (raw.flatten(1).abs().sum(1) == 0) & success
    assert zero.sum() >= 3  # the library behaviour this test is about
    clean = tiny_defense.predict(x).argmax(1)
    rows = make("foolbox", "L2CarliniWagnerAttack", Threat.L2, 1.5, params)(
        tiny_defense, EXACT, x, y, list(range(N)), clean)
    for i in torch.nonzero(zero & (clean == y)).flatten().tolist():
        assert rows[i].adv_correct  # not counted as a success at epsilon 1.5
        assert rows[i].distance == pytest.approx(float(x[i].norm()), rel=1e-5)


def test_boundary_attack_starts_from_other_class(tiny_defense, mnist_test_small):
    x, y = mnist_test_small
    attack = make("foolbox", "BoundaryAttack", Threat.L2, 1.5, {"steps": 20})
    pred = tiny_defense.predict(x[:N]).argmax(1)
    starts, has = attack._starting_points(x[:N], y[:N], pred)
    assert has.all()
    assert (tiny_defense.predict(starts).argmax(1) != y[:N]).all()
    # a batch of one class has no other-class input: foolbox's blended-noise init takes over
    same = torch.nonzero(y == y[0]).flatten()[:4]
    xs, ys = x[same], y[same]
    clean = tiny_defense.predict(xs).argmax(1)
    rows = attack(tiny_defense, EXACT, xs, ys, same.tolist(), clean)
    check_rows(rows, ys, clean, same.tolist(), 1.5, True)
    assert sum(r.distance is not None for r in rows) >= 2


class NoisyDefense(Defense):
    """The tiny CNN on inputs with Gaussian noise (std 0.3): a randomized defense."""

    randomized = True

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.predict_with_grad(x)

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x + 0.3 * torch.randn_like(x))


@pytest.mark.parametrize("key,params", [
    (("torchattacks", "EOTPGD"), {"steps": 5, "eot_iter": 2}),
    (("autoattack", "AutoAttack"), {"version": "rand", "n_iter": 5, "eot_iter": 2}),
])
def test_randomized_defense_gets_eot_and_verify_draws(key, params, tiny_cnn, mnist_test_small):
    defense = NoisyDefense(tiny_cnn).eval()
    adaptive = AdaptiveSpec(GradientHook.EXACT, randomized=True, eot=2)
    x, y = mnist_test_small[0][:N], mnist_test_small[1][:N]
    clean = defense.predict(x).argmax(1)
    attack = make_attack(AttackSpec("r", key[0], key[1], Threat.LINF, 0.3,
                                     params=MappingProxyType(params), verify_draws=3))
    rows = attack(defense, adaptive, x, y, list(range(N)), clean)
    attacked = [r for r in rows if r.clean_pred == r.label]
    assert attacked and all(len(r.draws) == 3 for r in attacked if r.distance is not None)
    for r in attacked:
        if not r.adv_correct:
            assert sum(d != r.label for d in r.draws) >= 2  # won the vote outright
    assert sum(not r.adv_correct for r in attacked) >= len(attacked) // 2


def test_gaussian_noise_distance_is_the_first_verified_level(tiny_defense, mnist_test_small):
    x, y = mnist_test_small[0][:N], mnist_test_small[1][:N]
    clean = tiny_defense.predict(x).argmax(1)
    coarse = make("foolbox", "GaussianNoise", Threat.L2, 1.5,
                  {"levels": 4, "max_norm": 16.0, "repeats": 2})
    rows = coarse(tiny_defense, EXACT, x, y, list(range(N)), clean)
    # levels 4, 8, 12, 16; clipping to [0, 1] only shortens the noise
    for r in rows:
        if r.distance is not None and r.clean_pred == r.label:
            assert 0 < r.distance <= 16.0 + 1e-4
    assert sum(r.distance is not None for r in rows) >= N // 2
