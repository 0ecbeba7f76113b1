"""The base class's invariants, each shown able to fail, with fake attacks and fake defenses.

The fake defense classifies by mean brightness (class 1 iff mean(x) > 0.5), so whether a
candidate "fools" it is known in advance; the fake attacks return hand-made candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import MappingProxyType

import pytest
import torch
from torch import nn

from robustgen_bench.adaptive import AdaptiveSpec, GradientHook, Surrogate
from robustgen_bench.attacks import (
    Attack, AttackOutput, AttackSpec, UnknownAttackError, attack_names, get_attack_class,
    make_attack,
)
from robustgen_bench.attacks.params import Param
from robustgen_bench.attacks.verification import majority_vote
from robustgen_bench.defenses.base import Defense
from robustgen_bench.errors import ConfigError, UserInputError
from robustgen_bench.threat import Threat

EXACT = AdaptiveSpec(GradientHook.EXACT, randomized=False, eot=1)




class BrightnessDefense(Defense):
    """Class 1 iff the mean pixel exceeds 0.5 (2 classes); optionally flips with prob ``flip``."""

    num_classes = 2

    def __init__(self, flip: float = 0.0) -> None:
        super().__init__()
        self.flip = flip
        self.randomized = flip > 0
        self.scale = nn.Parameter(torch.tensor(10.0))  # a parameter, to check it is restored
        self.calls = 0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        with torch.no_grad():
            return self.predict_with_grad(x)

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(dim=1) - 0.5
        if self.flip > 0:
            m = torch.where(torch.rand_like(m) < self.flip, -m, m)
        return torch.stack([-m, m], dim=1) * self.scale


def fake(candidates: Callable[[torch.Tensor, int], AttackOutput], *, minimal: bool = False,
         params: dict[str, Param] | None = None) -> type[Attack]:
    """A fake attack class returning ``candidates(x, call_number)``; logs what it was given."""

    class Fake(Attack):
        LIBRARY, NAME = "test", "Fake"
        MINIMAL_NORM = minimal
        PARAMS = MappingProxyType(params or {})
        seen: list[torch.Tensor] = []

        def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
            type(self).seen.append(x.clone())
            return candidates(x, len(type(self).seen) - 1)

    Fake.seen = []
    return Fake


def spec(eps: float = 0.3, threat: Threat = Threat.LINF, **params: object) -> AttackSpec:
    return AttackSpec(id="t", library="test", attack="Fake", threat=threat, epsilon=eps,
                      params=MappingProxyType(dict(params)), verify_draws=5, seed=0)


def batch(n: int = 4, level: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """n dim images (class 0), labels, dataset indices."""
    return torch.full((n, 1, 4, 4), level), torch.zeros(n, dtype=torch.long), list(range(10, 10 + n))


def run(attack: Attack, defense: Defense, x: torch.Tensor, y: torch.Tensor, idx: list[int],
        adaptive: AdaptiveSpec = EXACT, clean: torch.Tensor | None = None):
    clean_pred = defense.predict(x).argmax(1) if clean is None else clean
    return attack(defense, adaptive, x, y, idx, clean_pred)


# --------------------------------------------------------------------- budget and bounds
def test_over_budget_example_counts_robust_with_violation(caplog):
    d = BrightnessDefense()
    x, y, idx = batch()
    over = fake(lambda x, _: AttackOutput(x + 0.4, flagged=torch.ones(len(x), dtype=torch.bool)))
    assert (d.predict(x + 0.4).argmax(1) == 1).all()  # it would fool the defense
    with caplog.at_level(logging.WARNING):
        rows = run(over(spec(eps=0.3)), d, x, y, idx)
    assert [r.sample_index for r in rows] == idx
    assert all(r.adv_correct and r.adv_pred == 0 and r.distance is None for r in rows)
    assert all(r.violation is not None and r.violation.startswith("norm 0.4 > eps 0.3")
               for r in rows)
    assert "violates the threat model" in caplog.text
    # the same candidate within a larger budget is a verified success
    rows = run(over(spec(eps=0.5)), d, x, y, idx)
    assert all(not r.adv_correct and r.adv_pred == 1 and r.violation is None for r in rows)
    assert all(abs(r.distance - 0.4) < 1e-6 for r in rows)


def test_l2_budget_is_measured_in_l2():
    d = BrightnessDefense()
    x, y, idx = batch()
    # +0.3 on 16 pixels: Linf 0.3, L2 1.2
    attack = fake(lambda x, _: AttackOutput(x + 0.3))
    assert all(r.adv_correct and r.violation for r in
               run(attack(spec(eps=1.0, threat=Threat.L2)), d, x, y, idx))
    rows = run(attack(spec(eps=1.25, threat=Threat.L2)), d, x, y, idx)
    assert all(not r.adv_correct and abs(r.distance - 1.2) < 1e-5 for r in rows)


def test_out_of_bounds_example_counts_robust():
    d = BrightnessDefense()
    x, y, idx = batch()

    def oob(x: torch.Tensor, _: int) -> AttackOutput:
        xa = x + 0.3
        xa[:, 0, 0, 0] = 1.01  # one pixel above 1
        return AttackOutput(xa)

    rows = run(fake(oob)(spec(eps=1.0)), d, x, y, idx)
    assert all(r.adv_correct and r.distance is None and r.adv_pred == 0 for r in rows)
    assert all(r.violation.startswith("out of bounds") for r in rows)

    def nan(x: torch.Tensor, _: int) -> AttackOutput:
        xa = x + 0.3
        xa[:, 0, 1, 1] = float("nan")
        return AttackOutput(xa)

    rows = run(fake(nan)(spec(eps=1.0)), d, x, y, idx)
    assert all(r.adv_correct and r.violation == "non-finite values" for r in rows)


# --------------------------------------------------------------------- predict decides
def test_library_flag_is_not_trusted():
    d = BrightnessDefense()
    x, y, idx = batch()
    # flagged successful, but mean 0.35: predict says class 0 (correct) -> robust
    claims = fake(lambda x, _: AttackOutput(x + 0.1, flagged=torch.ones(len(x), dtype=torch.bool)))
    rows = run(claims(spec(eps=0.3)), d, x, y, idx)
    assert all(r.adv_correct and r.distance is None and r.draws == (0,) for r in rows)
    # flagged failed, but predict says class 1 -> broken
    denies = fake(lambda x, _: AttackOutput(x + 0.3, flagged=torch.zeros(len(x), dtype=torch.bool)))
    rows = run(denies(spec(eps=0.3)), d, x, y, idx)
    assert all(not r.adv_correct and r.adv_pred == 1 for r in rows)


def test_unchanged_input_is_no_attack_and_needs_no_predict():
    d = BrightnessDefense()
    x, y, idx = batch()
    clean = d.predict(x).argmax(1)
    d.calls = 0
    rows = run(fake(lambda x, _: AttackOutput(x.clone()))(spec()), d, x, y, idx, clean=clean)
    assert d.calls == 0
    assert all(r.adv_correct and r.distance is None and r.draws == () for r in rows)


def test_misclassified_clean_samples_are_not_attacked():
    d = BrightnessDefense()
    x, y, idx = batch(4)
    x[1], x[3] = 0.75, 0.9  # classified 1, label 0
    attack = fake(lambda x, _: AttackOutput(x + 0.3))
    a = attack(spec())
    rows = run(a, d, x, y, idx)
    assert len(attack.seen) == 1 and len(attack.seen[0]) == 2  # only samples 0 and 2 attacked
    for i in (1, 3):
        assert rows[i].adv_correct is False and rows[i].distance == 0.0
        assert rows[i].adv_pred == rows[i].clean_pred == 1
    assert not rows[0].adv_correct and abs(rows[0].distance - 0.3) < 1e-6


def test_randomized_defense_is_verified_with_several_draws():
    torch.manual_seed(123)  # must not matter: the attack seeds itself
    d = BrightnessDefense(flip=0.3)
    x, y, idx = batch(32)
    attack = fake(lambda x, _: AttackOutput(x + 0.3))
    randomized = AdaptiveSpec(GradientHook.EXACT, randomized=True, eot=3)
    clean = torch.zeros(32, dtype=torch.long)
    rows = run(attack(spec()), d, x, y, idx, adaptive=randomized, clean=clean)
    assert all(len(r.draws) == 5 for r in rows)
    for r in rows:  # adv_pred is the majority of the stored draws; ties go to the label
        ones = sum(r.draws)
        assert r.adv_pred == (1 if ones > 2 else 0) and r.adv_correct == (r.adv_pred == 0)
    assert 0 < sum(r.adv_correct for r in rows) < 32  # the flips make some votes fail
    again = run(attack(spec()), d, x, y, idx, adaptive=randomized, clean=clean)
    assert again == rows  # seeded from spec.seed and the indices, not from the global RNG
    # a deterministic defense gets one draw
    rows = run(attack(spec()), BrightnessDefense(), x, y, idx, clean=clean)
    assert all(len(r.draws) == 1 for r in rows)


def test_majority_vote_ties_go_to_the_label():
    draws = torch.tensor([[1, 2, 0], [1, 2, 0], [0, 3, 0], [0, 3, 1]])  # (D=4, N=3)
    y = torch.tensor([0, 2, 0])
    assert majority_vote(draws, y).tolist() == [0, 2, 0]
    assert majority_vote(draws, torch.tensor([5, 5, 5])).tolist() == [0, 2, 0]


# --------------------------------------------------------------------- restarts
def test_restarts_sample_is_robust_only_if_it_survives_every_restart():
    d = BrightnessDefense()
    x, y, idx = batch(4)

    def nth_try(x: torch.Tensor, call: int) -> AttackOutput:
        # sample at position i of the original batch succeeds from restart i on (never for i=3)
        xa = x + 0.1
        orig = [int(v) for v in (x[:, 0, 0, 0] * 100).round()]
        for j, o in enumerate(orig):
            if o - 20 <= call and o - 20 < 3:
                xa[j] = x[j] + 0.3
        return AttackOutput(xa)

    x = x.clone()
    for i in range(4):
        x[i, 0, 0, 0] = (20 + i) / 100  # tag each sample with its position
    params = {"restarts": Param(1, int, "restarts", minimum=1)}
    attack = fake(nth_try, params=params)
    rows = run(attack(spec(restarts=3)), d, x, y, idx)
    assert [r.adv_correct for r in rows] == [False, False, False, True]
    # each restart attacks only the survivors of the previous ones
    assert [len(s) for s in attack.seen] == [4, 3, 2]
    attack.seen.clear()
    rows = run(attack(spec(restarts=1)), d, x, y, idx)
    assert [r.adv_correct for r in rows] == [False, True, True, True]


# --------------------------------------------------------------------- minimal norm
def test_minimal_norm_records_distance_and_robustness_at_epsilon():
    d = BrightnessDefense()
    x, y, idx = batch(2)

    def two(x: torch.Tensor, _: int) -> AttackOutput:
        return AttackOutput(torch.stack([x[0] + 0.27, x[1] + 0.4]))

    rows = run(fake(two, minimal=True)(spec(eps=0.3)), d, x, y, idx)
    assert not rows[0].adv_correct and abs(rows[0].distance - 0.27) < 1e-6
    # beyond epsilon: no violation, robust at this budget, smallest distance kept
    assert rows[1].adv_correct and abs(rows[1].distance - 0.4) < 1e-6
    assert rows[1].violation is None and rows[1].adv_pred == 0


def test_minimal_norm_fallback_used_when_smallest_fails_verification():
    d = BrightnessDefense()
    x, y, idx = batch(2)

    def with_fallback(x: torch.Tensor, _: int) -> AttackOutput:
        primary = x + 0.1  # flagged, but not adversarial for predict
        return AttackOutput(primary, flagged=torch.ones(2, dtype=torch.bool),
                            fallbacks=(torch.stack([x[0] + 0.28, x[1]]),))

    rows = run(fake(with_fallback, minimal=True)(spec(eps=0.3)), d, x, y, idx)
    assert not rows[0].adv_correct and abs(rows[0].distance - 0.28) < 1e-6
    assert rows[1].adv_correct and rows[1].distance is None  # no verified adversarial


def test_attack_restores_defense_state():
    d = BrightnessDefense().train()
    x, y, idx = batch()

    def meddle(x: torch.Tensor, _: int) -> AttackOutput:
        assert not d.scale.requires_grad  # frozen while attacking
        d.eval()
        return AttackOutput(x + 0.3)

    run(fake(meddle)(spec()), d, x, y, idx)
    assert d.training and d.scale.requires_grad


# --------------------------------------------------------------------- configuration
def test_validate_params_rejects_unknown_and_wrong_types():
    cls = get_attack_class("foolbox", "LinfPGD")
    cls.validate_params({"steps": 5, "rel_stepsize": 1, "restarts": 2})  # int is a fine float
    cases = [({"stepz": 5}, "stepz", "Did you mean 'steps'"), ({"steps": "ten"}, "steps", "integer"),
             ({"steps": True}, "steps", "integer"), ({"steps": 1.5}, "steps", "integer"),
             ({"random_start": "yes"}, "random_start", "true or false"),
             ({"steps": 0}, "steps", ">= 1")]
    for params, key, text in cases:
        with pytest.raises(ConfigError) as e:
            cls.validate_params(params)
        assert e.value.key == key and text in str(e.value)
    with pytest.raises(ConfigError) as e:
        get_attack_class("autoattack", "AutoAttack").validate_params({"attacks": ["apgd-c"]})
    assert e.value.key == "attacks" and "apgd-ce" in str(e.value)
    with pytest.raises(ConfigError) as e:
        get_attack_class("foolbox", "L2DeepFoolAttack").validate_params({"loss": "hinge"})
    assert e.value.key == "loss"


def test_make_attack_unknown_names_and_threats():
    with pytest.raises(KeyError) as e:
        make_attack(AttackSpec("x", "foolbx", "LinfPGD", Threat.LINF, 0.3))
    assert isinstance(e.value, UserInputError) and "Did you mean 'foolbox'" in str(e.value)
    with pytest.raises(UnknownAttackError) as e:
        make_attack(AttackSpec("x", "foolbox", "LinfPDG", Threat.LINF, 0.3))
    assert e.value.key == "attack" and "LinfPGD" in str(e.value)
    with pytest.raises(ConfigError) as e:
        make_attack(AttackSpec("x", "foolbox", "DDNAttack", Threat.LINF, 0.3))
    assert e.value.key == "threat"
    with pytest.raises(ConfigError) as e:
        make_attack(AttackSpec("x", "foolbox", "L2PGD", Threat.L2, 1.5,
                               params=MappingProxyType({"restart": 2})))
    assert e.value.key == "restart"
    assert ("foolbox", "L2PGD") in attack_names()


def test_repr_is_stable_and_complete():
    a = make_attack(AttackSpec("x", "foolbox", "L2PGD", Threat.L2, 1.5,
                               params=MappingProxyType({"steps": 7}), seed=3))
    b = make_attack(AttackSpec("y", "foolbox", "L2PGD", Threat.L2, 1.5,
                               params=MappingProxyType({"steps": 7, "restarts": 1}), seed=3))
    assert repr(a) == repr(b) == (
        "foolbox/L2PGD(threat=l2, epsilon=1.5, abs_stepsize=None, best_iterate=True, "
        "loss='margin', random_start=True, "
        "rel_stepsize=0.025, restarts=1, steps=7, verify_draws=5, seed=3)")
    assert get_attack_class("foolbox", "L2PGD").MINIMAL_NORM is False
    assert get_attack_class("foolbox", "DDNAttack").MINIMAL_NORM is True


def test_call_cannot_be_overridden():
    with pytest.raises(TypeError):
        class Cheater(Attack):  # noqa: F841
            def __call__(self, *args: object) -> list:  # type: ignore[override]
                return []

            def _run(self, model, x, y):  # pragma: no cover
                raise AssertionError


def test_attack_level_eot_overrides_the_entry_for_this_attack_only():
    """A suite's ``eot:`` (e.g. a Table 2.7 sweep) sets the surrogate's draws; None keeps the entry's."""
    seen: list[int] = []

    class EotSpy(Attack):
        LIBRARY, NAME = "test", "Fake"

        def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
            seen.append(model.eot)
            return AttackOutput(x)

    d = BrightnessDefense()
    x, y, idx = batch(2)
    randomized = AdaptiveSpec(GradientHook.EXACT, randomized=True, eot=3)
    clean = torch.zeros(2, dtype=torch.long)
    for eot in (None, 1, 7):
        s = AttackSpec(id="t", library="test", attack="Fake", threat=Threat.LINF, epsilon=0.1,
                       verify_draws=1, seed=0, eot=eot)
        run(EotSpy(s), d, x, y, idx, adaptive=randomized, clean=clean)
    assert seen == [3, 1, 7]
    assert "eot" not in spec().canonical()  # cell keys of suites without eot are unchanged
    # a deterministic defense: its draws are identical, so one is taken whatever eot asks
    deterministic = AdaptiveSpec(GradientHook.EXACT, randomized=False, eot=1)
    seen.clear()
    for eot in (None, 1, 7):
        s = AttackSpec(id="t", library="test", attack="Fake", threat=Threat.LINF, epsilon=0.1,
                       verify_draws=1, seed=0, eot=eot)
        run(EotSpy(s), d, x, y, idx, adaptive=deterministic, clean=clean)
    assert seen == [1, 1, 1]


def test_one_draw_of_a_deterministic_defense_is_the_mean_of_several():
    """Why one draw suffices: the k-draw surrogate of a deterministic defense gives the same
    logits and input gradients as the one-draw surrogate (up to float rounding of sum / k)."""
    d = BrightnessDefense()
    x, _, _ = batch(3)
    outs = []
    for eot in (1, 3, 10):
        xi = x.clone().requires_grad_(True)
        logits = Surrogate(d, eot)(xi)
        (g,) = torch.autograd.grad(logits[:, 1].sum(), xi)
        outs.append((logits.detach(), g))
    for logits, g in outs[1:]:
        torch.testing.assert_close(logits, outs[0][0])
        torch.testing.assert_close(g, outs[0][1])


@pytest.mark.parametrize("attack,threat,top,scale", [("LinfPGDSearch", Threat.LINF, 0.5, 1.0),
                                                     ("L2PGDSearch", Threat.L2, 2.0, 4.0)])
def test_pgd_search_stores_the_smallest_confirmed_budget(attack, threat, top, scale):
    """On the brightness defense the smallest flip is known: raise every pixel by 0.5 - level
    (L∞ 0.5 - level, L2 (0.5 - level)·4 on 4×4 images). The search must report the first grid
    budget above it, and robust accuracy still follows the cell's epsilon."""
    levels = torch.tensor([0.25, 0.35, 0.45, 0.1])
    x = levels.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    y = torch.zeros(4, dtype=torch.long)
    grid = 10
    s = AttackSpec(id="s", library="foolbox", attack=attack, threat=threat, epsilon=top / 4,
                   verify_draws=1, seed=0,
                   params=MappingProxyType({"grid": grid, "max_epsilon": top, "steps": 20}))
    d = BrightnessDefense()
    rows = make_attack(s)(d, EXACT, x, y, [0, 1, 2, 3], torch.zeros(4, dtype=torch.long))
    step = top / grid
    for r, level in zip(rows, levels.tolist()):
        true_min = (0.5 - level) * scale
        if true_min > top:  # beyond the search: robust, no distance
            assert r.adv_correct and r.distance is None
            continue
        assert r.distance is not None and true_min < r.distance <= true_min + step + 1e-4, (level, r)
        assert r.adv_correct == (r.distance > top / 4)


class StricterPredictDefense(BrightnessDefense):
    """The gradient path flips at mean 0.5, ``predict`` only at mean 0.62: a surrogate that
    calls samples adversarial earlier than the defense does (as a warm-started surrogate can)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        with torch.no_grad():
            m = x.flatten(1).mean(dim=1) - 0.62
            return torch.stack([-m, m], dim=1) * self.scale


def test_pgd_search_keeps_searching_until_predict_confirms():
    """A sample leaves the search on ``predict``'s verdict, not the surrogate's: here the
    surrogate flips at budget 0.25, the defense at 0.37, so the stored distance is the first
    grid budget above 0.37 (0.40), not a failure at 0.30."""
    x, y = torch.full((2, 1, 4, 4), 0.25), torch.zeros(2, dtype=torch.long)
    s = AttackSpec(id="s", library="foolbox", attack="LinfPGDSearch", threat=Threat.LINF,
                   epsilon=0.3, verify_draws=1, seed=0,
                   params=MappingProxyType({"grid": 10, "max_epsilon": 0.5, "steps": 20}))
    rows = make_attack(s)(StricterPredictDefense(), EXACT, x, y, [0, 1],
                          torch.zeros(2, dtype=torch.long))
    for r in rows:
        assert r.distance is not None and 0.37 < r.distance <= 0.40 + 1e-4, r
        assert r.adv_correct  # robust at the cell's epsilon 0.3


def test_unbounded_probe_of_a_budget_search_searches_up_to_the_unbounded_budget():
    """The unbounded check re-runs the cell's attack at a budget that reaches every image; for
    a PGD search that capped its grid at ``max_epsilon`` the cap must move with it, or the probe
    reports survivors that no budget the search tried could break."""
    from robustgen_bench.checks.probes import unbounded

    x, y = torch.full((2, 1, 4, 4), 0.25), torch.zeros(2, dtype=torch.long)
    s = AttackSpec(id="s", library="foolbox", attack="LinfPGDSearch", threat=Threat.LINF,
                   epsilon=0.1, verify_draws=1, seed=0,
                   params=MappingProxyType({"grid": 8, "max_epsilon": 0.1, "steps": 10}))
    out = unbounded(s, BrightnessDefense(), EXACT, x, y, [0, 1])
    assert out["epsilon"] == 1.0 and out["survivors"] == 0
