"""The warm-started surrogate: continues one attack path, never inherits across anything else.

Each constructed case would give a different answer if a solution leaked: a stale latent for
another sample, another batch size, a new restart, another attack cell or a verification call.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch

from robustgen_bench.adaptive import AdaptiveSpec, GradientHook, Surrogate, WarmStart
from robustgen_bench.attacks import AttackSpec, make_attack
from robustgen_bench.defenses import get_family
from robustgen_bench.defenses.abs import ABSDefense
from robustgen_bench.threat import Threat

SMALL = {"n_init": 64, "steps": 6}
HOOK = AdaptiveSpec(GradientHook.DETACHED_ZSTAR, randomized=False, eot=1)


def _abs(family: str = "abs", **cfg: object) -> ABSDefense:
    torch.manual_seed(0)
    return get_family(family)({**SMALL, **cfg}).eval()


def _images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_first_call_is_the_full_inference() -> None:
    d = _abs()
    x = _images()
    warm = Surrogate(d, warm=WarmStart(steps=2))
    torch.testing.assert_close(warm(x), d.surrogate_logits(x))
    assert warm.calls == {"cold": 1, "warm": 0}


def test_k_equal_to_the_defense_steps_from_the_same_start_is_the_full_hook() -> None:
    """Warm with k = steps, started from the candidate search itself, is the full inference."""
    d = _abs()
    x = _images()
    start = d.initial_latents(x)
    (recs, priors), _ = d.warm_solution(x, start, steps=d.cfg.steps)
    torch.testing.assert_close(d.logits_at_solution(x, (recs, priors)), d.surrogate_logits(x))


def test_warm_steps_continue_the_path_and_score_no_worse_than_the_candidates() -> None:
    d = _abs()
    x = _images()
    s = Surrogate(d, warm=WarmStart(steps=1))
    s(x)
    x2 = (x + 0.002).clamp(0, 1)  # one small attack step
    logits = s(x2)
    assert s.calls == {"cold": 1, "warm": 1}
    # one warm step from the previous optimum beats one step from the candidate search
    cold_one = d.logits_at_solution(x2, d.final_terms(x2.flatten(1), d.optimise(x2, steps=1)))
    assert bool((logits >= cold_one - 1e-6).all())  # logits = -scores: higher is a better fit


def test_the_start_is_chosen_per_class_and_sample_by_score() -> None:
    """A deliberately bad warm start (far latents) loses to the candidate search."""
    d = _abs()
    x = _images()
    cand = d.initial_latents(x)
    bad = type(cand)(mu=cand.mu + 50.0, logvar=None)
    chosen = d._warm_start(x, cand, bad)
    torch.testing.assert_close(chosen.mu, cand.mu)


@pytest.mark.parametrize("case", ["other_samples", "other_size", "reset", "far_step"])
def test_no_solution_is_inherited_outside_one_path(case: str) -> None:
    d = _abs(steps=4)
    s = Surrogate(d, warm=WarmStart(steps=1, radius=1.0))
    x = _images(3)
    s(x)
    if case == "other_samples":  # same shape, other images (e.g. rows in another order)
        y = _images(3, seed=7)
    elif case == "other_size":  # AutoAttack re-running a subset of the batch
        y = x[:2] + 0.001
    elif case == "reset":  # a new restart: the base class resets the surrogate
        s.reset()
        y = x + 0.001
    else:  # a random start far from the last iterate
        y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    out = s(y)
    assert s.calls == {"cold": 2, "warm": 0}
    torch.testing.assert_close(out, d.surrogate_logits(y))  # exactly the full hook


def test_randomized_defense_keeps_one_warm_chain_per_draw() -> None:
    d = _abs("eabs", steps=3)
    s = Surrogate(d, eot=3, warm=WarmStart(steps=1))
    x = _images(2)
    torch.manual_seed(5)
    s(x)
    chains = [st.mu.clone() for st in s._chain[1]]
    assert len(chains) == 3 and not torch.equal(chains[0], chains[1])  # independent draws
    s(x + 0.001)
    assert s.calls == {"cold": 1, "warm": 1}


def _pgd(surrogate: WarmStart | None, seed: int = 0, restarts: int = 1):
    return make_attack(AttackSpec(
        id="pgd", library="foolbox", attack="L2PGD", threat=Threat.L2, epsilon=1.5, seed=seed,
        params=MappingProxyType({"steps": 4, "rel_stepsize": 0.25, "restarts": restarts}),
        surrogate=surrogate))


def test_attack_with_warm_hook_is_seeded_and_keyed() -> None:
    d = _abs(steps=4)
    x = _images(4)
    y = d.predict(x).argmax(1)  # attack the defense's own labels
    warm = WarmStart(steps=1)
    a = _pgd(warm, restarts=2)(d, HOOK, x, y, [0, 1, 2, 3], y)
    b = _pgd(warm, restarts=2)(d, HOOK, x, y, [0, 1, 2, 3], y)
    assert a == b  # reproducible from the seed (no state survives between calls)
    spec = _pgd(warm).spec
    assert spec.canonical()["surrogate"] == {"warm_steps": 1, "radius": 1.0}
    assert "surrogate" not in _pgd(None).spec.canonical()  # full-hook cells keep their keys


def test_suite_surrogate_is_validated_and_per_attack_wins(tmp_path) -> None:
    from robustgen_bench.config import load_suite
    from robustgen_bench.errors import ConfigError

    text = """name: s
dataset: {name: mnist, n: 4}
models: [mnist/cnn]
run: {surrogate: {warm_steps: 5}}
attacks:
  - {id: a, library: foolbox, attack: L2PGD, threat: l2, epsilon: 1.5}
  - {id: b, library: foolbox, attack: L2PGD, threat: l2, epsilon: 1.5, surrogate: full}
"""
    p = tmp_path / "s.yaml"
    p.write_text(text)
    s = load_suite(p)
    assert s.attacks[0].surrogate == WarmStart(steps=5) and s.attacks[1].surrogate is None
    p.write_text(text.replace("warm_steps: 5", "warm_stepz: 5"))
    with pytest.raises(ConfigError) as e:
        load_suite(p)
    assert "run.surrogate.warm_stepz" in str(e.value) and "warm_steps" in str(e.value)
    p.write_text(text.replace("surrogate: full", "surrogate: fast"))
    with pytest.raises(ConfigError, match="attacks\\[1\\].surrogate"):
        load_suite(p)


# ---- GAN-ABS: the same contract --------------------------------------------------------------

def _gan(**kw: object):
    from test_gan_abs import tiny_defense

    return tiny_defense(**kw)


@pytest.mark.parametrize("plus", [False, True])
def test_gan_abs_warm_from_its_own_start_with_all_steps_is_the_full_hook(plus: bool) -> None:
    d = _gan(plus_variant=plus, batch_size=2)  # 3 images: two chunks
    x = _images()
    cold, state = d.warm_solution(x, None, steps=d.settings.steps)
    torch.testing.assert_close(d.logits_at_solution(x, cold), d.surrogate_logits(x))
    # started from the initialiser's codes themselves, k = steps reproduces the full inversion
    own_start = [type(s)(z=s.z_init, z_init=s.z_init,
                         offsets=None if s.offsets is None else torch.zeros_like(s.offsets))
                 for s in state]
    warm, _ = d.warm_solution(x, own_start, steps=d.settings.steps)
    torch.testing.assert_close(d.logits_at_solution(x, warm), d.surrogate_logits(x))


def test_gan_abs_warm_start_is_chosen_by_score_and_continues_the_path() -> None:
    d = _gan()
    x = _images()
    _, state = d.warm_solution(x, None, steps=1)
    x2 = (x + 0.002).clamp(0, 1)
    one_warm, _ = d.warm_solution(x2, state, steps=1)
    one_cold = [d.invert(xb, steps=1) for xb in d._chunks(x2)]
    # logits = -losses: one step from the previous optimum fits no worse than one from scratch
    assert bool((d.logits_at_solution(x2, one_warm) >= d.logits_at_solution(x2, one_cold) - 1e-5).all())
    # a far-away previous solution loses to the initialiser everywhere
    far = [type(s)(z=s.z + 50.0, z_init=s.z_init, offsets=s.offsets) for s in state]
    chosen, _ = d.warm_solution(x2, far, steps=0)
    for c, xb in zip(chosen, d._chunks(x2)):
        torch.testing.assert_close(c.z, d.initial_codes(xb))
    with pytest.raises(ValueError, match="batch shape"):
        d.warm_solution(x2[:2], state, steps=1)


def test_gan_abs_through_the_warm_surrogate() -> None:
    d = _gan()
    x = _images()
    s = Surrogate(d, warm=WarmStart(steps=2))
    s(x)
    s((x + 0.001).clamp(0, 1))
    assert s.calls == {"cold": 1, "warm": 1}
    s(x[:2])  # another batch size: cold, never the stale solution
    assert s.calls == {"cold": 2, "warm": 1}


def test_cell_key_carries_the_hook_only_where_it_can_change_rows(tmp_path) -> None:
    """A CNN (exact gradients) gets the same cells under either hook; ABS does not."""
    from robustgen_bench.config import load_suite
    from robustgen_bench.runner import cell_key
    from robustgen_bench.zoo import get_entry

    text = """name: s
dataset: {name: mnist, n: 4}
models: [mnist/cnn, mnist/abs]
run: {surrogate: SURROGATE}
attacks:
  - {id: a, library: foolbox, attack: L2PGD, threat: l2, epsilon: 1.5}
"""
    keys = {}
    for hook in ("full", "{warm_steps: 5}"):
        p = tmp_path / "s.yaml"
        p.write_text(text.replace("SURROGATE", hook))
        s = load_suite(p)
        keys[hook] = {m: cell_key(get_entry(m), s, s.attacks[0]) for m in s.models}
    assert keys["full"]["mnist/cnn"] == keys["{warm_steps: 5}"]["mnist/cnn"]
    assert keys["full"]["mnist/abs"] != keys["{warm_steps: 5}"]["mnist/abs"]
