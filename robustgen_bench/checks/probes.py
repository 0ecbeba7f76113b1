"""Checks that run the defense on a small subsample: gradients, output range, randomness, the
unbounded attack, transfer from a standard model, and convergence (doubled steps, restarts/EOT).

Every probe reuses the suite's own attack classes (``make_attack``) with one setting changed,
so the same invariants hold as in the run: success is re-decided by the defense's ``predict``.
Inputs: ``x`` (k, C, H, W) in [0, 1], ``y`` (k,), ``indices`` the k dataset indices; the
subsample holds clean-correct samples only, so ``clean_pred`` is ``y``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from robustgen_bench.adaptive import AdaptiveSpec, Surrogate
from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.attacks.verification import majority_vote, predict_draws
from robustgen_bench.defenses.base import Defense
from robustgen_bench.stats import mcnemar_pvalue
from robustgen_bench.threat import Threat

#: AutoAttack's check_randomized: forward passes compared, and the tolerance on normalised logits.
REPEATS = 5
LOGIT_TOLERANCE = 1e-4


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample margin (N,): logit of the true class minus the largest other logit."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.max(1).values


def gradients(defense: Defense, adaptive: AdaptiveSpec, x: torch.Tensor,
              y: torch.Tensor) -> dict[str, Any]:
    """Input gradients of the margin through the EOT surrogate: how many are exactly zero or
    not finite (per sample: L1 norm == 0, or any non-finite entry)."""
    x = x.clone().requires_grad_(True)
    sur = Surrogate(defense, adaptive.eot)
    grads = [p.requires_grad for p in defense.parameters()]
    try:
        for p in defense.parameters():
            p.requires_grad_(False)
        (g,) = torch.autograd.grad(margin(sur(x), y).sum(), x, allow_unused=True)
    finally:
        for p, r in zip(defense.parameters(), grads):
            p.requires_grad_(r)
    if g is None:  # the output does not depend on the input at all
        g = torch.zeros_like(x)
    flat = g.detach().flatten(1)
    nonfinite = ~torch.isfinite(flat).all(dim=1)
    zero = (flat.abs().sum(dim=1) == 0) & ~nonfinite
    return {"samples": int(len(x)), "zero": int(zero.sum()), "nonfinite": int(nonfinite.sum())}


def _is_probability(out: torch.Tensor) -> bool:
    """AutoAttack's check_range_output: every row in [0, 1] and summing to 1."""
    out = out.detach().double()
    return bool(out.min() >= 0 and out.max() <= 1
                and torch.allclose(out.sum(dim=1), torch.ones(len(out), dtype=out.dtype), atol=1e-4))


def output_range(defense: Defense, adaptive: AdaptiveSpec, x: torch.Tensor) -> dict[str, Any]:
    """Whether ``predict`` and the surrogate return probabilities instead of logits."""
    with torch.no_grad():
        pred = defense.predict(x)
        sur = Surrogate(defense, adaptive.eot)(x)
    return {"predict": _is_probability(pred), "surrogate": _is_probability(sur)}


def repeat_predict(defense: Defense, x: torch.Tensor) -> dict[str, Any]:
    """AutoAttack's check_randomized: REPEATS predict calls; do predictions or normalised logits
    differ (max |softmax difference| > LOGIT_TOLERANCE)?"""
    with torch.no_grad():
        outs = [defense.predict(x).detach().double() for _ in range(REPEATS)]
    preds = torch.stack([o.argmax(1) for o in outs])
    probs = [torch.softmax(o, dim=1) for o in outs]
    diff = max(float((p - probs[0]).abs().max()) for p in probs[1:]) if len(probs) > 1 else 0.0
    changed = int((preds != preds[0]).any(dim=0).sum())
    return {"repeats": REPEATS, "samples": int(len(x)), "prediction_changes": changed,
            "max_prob_difference": diff,
            "differs": bool(changed > 0 or diff > LOGIT_TOLERANCE)}


def doubled_draws(defense: Defense, x: torch.Tensor, y: torch.Tensor, draws: int,
                  seed: int) -> dict[str, Any]:
    """Clean verdicts of a randomized defense with ``draws`` and with 2 × ``draws`` draws (majority,
    ties to the true label): how many verdicts flip, and the accuracy either way."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        d = predict_draws(defense, x, 2 * draws)
    one = majority_vote(d[:draws], y) == y
    two = majority_vote(d, y) == y
    flat = d.T
    split = int(sum(len(set(r.tolist())) > 1 for r in flat))
    return {"draws": draws, "accuracy": float(one.float().mean()),
            "accuracy_doubled": float(two.float().mean()), "flips": int((one != two).sum()),
            "samples": int(len(y)), "disagreeing": split}


def unbounded_epsilon(threat: Threat, x: torch.Tensor) -> float:
    """A budget that reaches every image in [0, 1]^d: 1 in L∞, sqrt(d) in L2."""
    return 1.0 if threat == Threat.LINF else math.sqrt(float(np.prod(x.shape[1:])))


def run_attack(spec: AttackSpec, defense: Defense, adaptive: AdaptiveSpec, x: torch.Tensor,
               y: torch.Tensor, indices: Sequence[int]) -> tuple[np.ndarray, Any]:
    """Robust flags (k,) of the attack ``spec`` on the subsample, and the attack (for x_adv)."""
    from robustgen_bench.attacks import make_attack

    attack = make_attack(spec)
    rows = attack(defense, adaptive, x, y, list(indices), y.clone())
    return np.array([bool(r.adv_correct) for r in rows]), attack


def unbounded(spec: AttackSpec, defense: Defense, adaptive: AdaptiveSpec, x: torch.Tensor,
              y: torch.Tensor, indices: Sequence[int]) -> dict[str, Any]:
    from robustgen_bench.attacks import get_attack_class

    eps = unbounded_epsilon(spec.threat, x)
    spec = replace(spec, epsilon=eps)
    # A random start in a ball this large is a random image, which breaks any classifier
    # without a single gradient step: the probe tests the attack's steps, so start at x.
    declared = get_attack_class(spec.library, spec.attack).PARAMS
    if "random_start" in declared:
        spec = _with_params(spec, random_start=False)
    if "max_epsilon" in declared:  # a budget search must reach the unbounded budget too
        spec = _with_params(spec, max_epsilon=eps)
    robust, _ = run_attack(spec, defense, adaptive, x, y, indices)
    return {"attack": spec.id, "epsilon": eps, "samples": int(len(y)),
            "survivors": int(robust.sum())}


def _with_params(spec: AttackSpec, **changes: Any) -> AttackSpec:
    params = dict(spec.params)
    params.update(changes)
    return replace(spec, params=MappingProxyType(params))


def bounded_form(spec: AttackSpec) -> AttackSpec | None:
    """``spec`` itself if it is a bounded attack; a minimal-norm attack as one bounded attack at
    ``spec.epsilon`` (``Attack.bounded_params``), or None where it has no such form."""
    from robustgen_bench.attacks import get_attack_class

    cls = get_attack_class(spec.library, spec.attack)
    if not getattr(cls, "MINIMAL_NORM", False):
        return spec
    changes = cls.bounded_params(spec.epsilon)
    return None if changes is None else _with_params(spec, **changes)


def _param_defaults(spec: AttackSpec) -> dict[str, Any]:
    from robustgen_bench.attacks import get_attack_class

    cls = get_attack_class(spec.library, spec.attack)
    out = {k: p.default for k, p in cls.PARAMS.items()}
    out.update(spec.params)
    return out


def convergence_variants(spec: AttackSpec, adaptive: AdaptiveSpec
                         ) -> list[tuple[str, AttackSpec, AdaptiveSpec]]:
    """(label, attack, adaptive) re-runs: twice the steps; and twice the restarts, or for a
    randomized defense twice the EOT draws (and verification draws)."""
    from robustgen_bench.attacks import get_attack_class

    declared = get_attack_class(spec.library, spec.attack).PARAMS
    params = _param_defaults(spec)
    out: list[tuple[str, AttackSpec, AdaptiveSpec]] = []
    for key in ("steps", "n_iter"):
        if key in declared and params.get(key) is not None:
            out.append((f"2x {key} ({2 * int(params[key])})",
                        _with_params(spec, **{key: 2 * int(params[key])}), adaptive))
            break
    if adaptive.randomized:
        eot = spec.eot if spec.eot is not None else adaptive.eot  # the attack's own EOT wins
        out.append((f"2x EOT ({2 * eot}) and verify draws ({2 * spec.verify_draws})",
                    replace(spec, verify_draws=2 * spec.verify_draws,
                            eot=None if spec.eot is None else 2 * spec.eot),
                    replace(adaptive, eot=2 * adaptive.eot)))
    else:
        for key in ("restarts", "n_restarts"):
            if key in declared and params.get(key) is not None:
                out.append((f"2x {key} ({2 * int(params[key])})",
                            _with_params(spec, **{key: 2 * int(params[key])}), adaptive))
                break
    return out


def convergence(spec: AttackSpec, stored_robust: np.ndarray, defense: Defense,
                adaptive: AdaptiveSpec, x: torch.Tensor, y: torch.Tensor,
                indices: Sequence[int], alpha: float) -> dict[str, Any]:
    """Stored robust flags vs each variant's on the same samples (exact McNemar)."""
    variants = []
    for label, s, a in convergence_variants(spec, adaptive):
        robust, _ = run_attack(s, defense, a, x, y, indices)
        p = mcnemar_pvalue(stored_robust, robust)
        lower = int((stored_robust & ~robust).sum())
        higher = int((~stored_robust & robust).sum())
        variants.append({"variant": label, "accuracy": float(robust.mean()), "p": p,
                         "newly_broken": lower, "newly_robust": higher,
                         "significant": bool(lower > higher and p < alpha)})
    return {"attack": spec.id, "epsilon": spec.epsilon, "samples": int(len(y)),
            "accuracy": float(stored_robust.mean()), "variants": variants}


def transfer(spec: AttackSpec, source: Defense, source_adaptive: AdaptiveSpec, defense: Defense,
             randomized: bool, x: torch.Tensor, y: torch.Tensor,
             indices: Sequence[int]) -> np.ndarray:
    """Broken flags (k,) of the defense under adversarials found on ``source`` by ``spec``,
    re-verified by the defense's own predict (majority of ``verify_draws`` draws)."""
    from robustgen_bench.attacks.base import _batch_seed

    src_robust, attack = run_attack(spec, source, source_adaptive, x, y, indices)
    x_adv = attack.last_x_adv.to(x.dtype)
    moved = torch.tensor(~src_robust)
    draws = spec.verify_draws if randomized else 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_batch_seed(spec.seed + 1, indices))
        votes = majority_vote(predict_draws(defense, x_adv, draws), y)
    return ((votes != y) & moved).numpy()
