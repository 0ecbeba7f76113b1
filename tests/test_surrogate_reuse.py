"""Reusing inner solutions (z*) across calls on the same input: exact for deterministic families,
shared draws for randomized ones, off unless an attack asks for it (DeepFool does)."""

from __future__ import annotations

import contextlib
from types import MappingProxyType

import pytest
import torch

from robustgen_bench.adaptive import AdaptiveSpec, GradientHook, Surrogate
from robustgen_bench.attacks import AttackSpec, make_attack
from robustgen_bench.defenses import get_family
from robustgen_bench.defenses.abs import ABSDefense
from robustgen_bench.threat import Threat

SMALL = {"n_init": 64, "steps": 3}
HOOK = AdaptiveSpec(GradientHook.DETACHED_ZSTAR, randomized=False, eot=1)


def _counting(family: str) -> tuple[ABSDefense, list[int]]:
    torch.manual_seed(0)
    d = get_family(family)(dict(SMALL)).eval()
    calls = [0]
    inner = d.inner_solution

    def counted(x: torch.Tensor):
        calls[0] += 1
        return inner(x)

    d.inner_solution = counted  # type: ignore[method-assign]
    return d, calls


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_reuse_is_exact_for_a_deterministic_defense() -> None:
    d, calls = _counting("abs")
    s = Surrogate(d, eot=1)
    x = _images().requires_grad_(True)
    (g_plain,) = torch.autograd.grad(s(x)[:, 3].sum(), x)
    with s.reusing_solutions():
        a = s(x)
        (g_a,) = torch.autograd.grad(a[:, 3].sum(), x)
        (g_b,) = torch.autograd.grad(s(x)[:, 7].sum(), x)
        assert calls[0] == 2  # one solve outside the block, one shared by both calls inside
        s(x.detach() + 0.01)  # a different input is solved again
        assert calls[0] == 3
    torch.testing.assert_close(a, d.surrogate_logits(x))
    torch.testing.assert_close(g_a, g_plain)
    assert not torch.equal(g_a, g_b)  # different classes, different gradients from one solution
    s(x)
    assert calls[0] == 5  # the block is over: every call solves again (the forward above too)


def test_randomized_defense_shares_draws_only_inside_the_block() -> None:
    d, calls = _counting("eabs")
    s = Surrogate(d, eot=3)
    x = _images(2)
    assert not torch.equal(s(x), s(x))  # fresh draws by default (AutoAttack's EOT relies on it)
    calls[0] = 0
    with s.reusing_solutions():
        a, b = s(x), s(x)
    assert torch.equal(a, b) and calls[0] == 3  # one solution per EOT draw, shared


def test_deepfool_on_abs_solves_once_per_step_and_matches_the_unshared_run(monkeypatch) -> None:
    d, calls = _counting("abs")
    x = _images(4)
    y = d.predict(x).argmax(1)  # attack the predicted labels: every sample starts correct
    spec = AttackSpec(id="df", library="foolbox", attack="L2DeepFoolAttack", threat=Threat.L2,
                      epsilon=5.0, params=MappingProxyType({"steps": 3, "candidates": 4}))
    shared = make_attack(spec)(d, HOOK, x, y, [0, 1, 2, 3], y)
    shared_calls, calls[0] = calls[0], 0
    monkeypatch.setattr(Surrogate, "reusing_solutions", lambda self: contextlib.nullcontext(self))
    unshared = make_attack(spec)(d, HOOK, x, y, [0, 1, 2, 3], y)
    # without reuse every DeepFool step solves candidates - 1 = 3 times instead of once (the
    # verification predicts are the same in both runs)
    assert calls[0] > shared_calls
    assert [r.adv_pred for r in shared] == [r.adv_pred for r in unshared]
    assert [r.distance for r in shared] == pytest.approx([r.distance for r in unshared], abs=1e-5)
