"""One surrogate draw for a deterministic defense: the cost and the equivalence, side by side.

An attack's ``eot: k`` averages k surrogate draws. For a deterministic defense (ABS, the CNNs)
the k draws are identical, so the attack base class now takes one (``attacks/base.py``). This
script runs the same attack on the same images of a deterministic zoo entry both ways, in this
process: **k draws** (the old behaviour, reached by declaring the hook randomized with
``verify_draws: 1``, so verification is one ``predict`` call in both runs) and **one draw** (the
entry as declared). It prints the CPU seconds of each, their ratio, and the paired outcome:
robust accuracy with Wilson intervals, the exact McNemar p-value, how many verdicts and adversarial
predictions agree, and the largest difference in stored distance.

Usage (the Table 2.7 study's PGD on ABS, warm hook as in attack_suites/mnist-attack-budget.yaml):
    .venv/bin/python benchmarks/deterministic_eot.py mnist/abs --n 20 --eot 3 --steps 20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import time
from dataclasses import replace
from types import MappingProxyType

import numpy as np
import torch

from robustgen_bench import zoo
from robustgen_bench.adaptive import WarmStart
from robustgen_bench.attacks import make_attack
from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.data import load_tensors
from robustgen_bench.report.render import format_rate
from robustgen_bench.stats import mcnemar_pvalue
from robustgen_bench.threat import Threat


def _acc(correct: Sequence[bool] | torch.Tensor) -> str:
    """Accuracy of a bool vector (list or tensor) with its Wilson interval."""
    return format_rate(int(sum(bool(c) for c in correct)), len(correct), digits=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a deterministic zoo id, e.g. mnist/abs")
    ap.add_argument("--n", type=int, default=20, help="first n test images")
    ap.add_argument("--eot", type=int, default=3, help="EOT draws asked for by the attack")
    ap.add_argument("--steps", type=int, default=20, help="PGD steps")
    ap.add_argument("--threat", choices=["l2", "linf"], default="l2")
    ap.add_argument("--epsilon", type=float, default=None, help="default: 1.5 (l2), 0.3 (linf)")
    ap.add_argument("--warm-steps", type=int, default=5, help="0: the full hook")
    args = ap.parse_args()

    torch.set_num_threads(1)
    entry = zoo.get_entry(args.model)
    if entry.adaptive.randomized:
        raise SystemExit(f"{args.model} is randomized: its EOT draws differ, nothing to compare")
    defense = zoo.build_defense(entry).eval()
    x, y = load_tensors(entry.dataset, "test", None)
    x, y = x[:args.n], y[:args.n]
    with torch.no_grad():
        clean = defense.predict(x).argmax(1)
    threat = Threat(args.threat)
    eps = args.epsilon if args.epsilon is not None else (1.5 if threat is Threat.L2 else 0.3)
    warm = WarmStart(steps=args.warm_steps, radius=1.0) if args.warm_steps else None
    spec = AttackSpec(id="pgd", library="foolbox",
                      attack="L2PGD" if threat is Threat.L2 else "LinfPGD", threat=threat,
                      epsilon=eps, verify_draws=1, seed=0, eot=args.eot, surrogate=warm,
                      params=MappingProxyType({"steps": args.steps, "rel_stepsize": 0.05,
                                               "loss": "margin"}))
    ways = {f"{args.eot} draws (before)": replace(entry.adaptive, randomized=True),
            "1 draw (now)": entry.adaptive}
    rows, cpu = {}, {}
    for name, adaptive in ways.items():
        t0 = time.process_time()
        rows[name] = make_attack(spec)(defense, adaptive, x, y, list(range(args.n)), clean)
        cpu[name] = time.process_time() - t0
    (a_name, a), (b_name, b) = rows.items()
    attacked = [i for i, r in enumerate(a) if r.clean_pred == r.label]
    ra = [a[i].adv_correct for i in attacked]
    rb = [b[i].adv_correct for i in attacked]
    only_a = sum(p and not q for p, q in zip(ra, rb))
    only_b = sum(q and not p for p, q in zip(ra, rb))
    dist = [abs(a[i].distance - b[i].distance) for i in attacked
            if a[i].distance is not None and b[i].distance is not None]
    print(f"{args.model}, {spec.attack} eps={eps} {args.steps} steps, eot={args.eot}, "
          f"warm steps {args.warm_steps}, first {args.n} test images ({len(attacked)} attacked)")
    print("| surrogate | CPU s | robust accuracy [95 % Wilson] |")
    print("|---|---:|---|")
    for name in rows:
        robust = [rows[name][i].adv_correct for i in attacked]
        print(f"| {name} | {cpu[name]:.1f} | {_acc(robust)} |")
    print(f"ratio (before / now): {cpu[a_name] / cpu[b_name]:.2f}x")
    print(f"verdicts agree on {sum(p == q for p, q in zip(ra, rb))} of {len(attacked)}; "
          f"robust only with {a_name}: {only_a}, only with {b_name}: {only_b}; "
          f"McNemar p = {mcnemar_pvalue(np.array(ra), np.array(rb)):.3g}")
    same_pred = sum(a[i].adv_pred == b[i].adv_pred for i in attacked)
    print(f"adversarial predictions agree on {same_pred} of {len(attacked)}; "
          f"largest distance difference {max(dist, default=0.0):.2e} over {len(dist)} samples")


if __name__ == "__main__":
    main()
