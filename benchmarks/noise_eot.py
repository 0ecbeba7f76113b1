"""The Gaussian-noise search on a randomized defense with one surrogate draw: cost and strength.

The suites' ``noise`` attack (``GaussianNoise``: repeated additive noise at ``levels`` norms) is
gradient-free: its surrogate only decides "flagged or not" at each level, and every candidate is
re-decided by the deployed ``predict`` with ``verify_draws`` draws before it counts. With the
entry's EOT (5 for E-ABS) each of those decisions costs five full inferences, which makes this
search the costliest cell of the ``mnist`` and ``fashion-mnist`` suites (E-ABS: 87 of 148 CPU-s
per sample, ``rgbench status runs/mnist``). This script runs the suite's own noise attack on the
same images both ways, in this process: the entry's EOT (the boards) and ``eot: 1`` (what a
suite can ask with the attack-level ``eot`` key). It prints the CPU seconds of each and their
ratio, robust accuracy at the suite's epsilon with Wilson intervals and the exact McNemar
p-value, and the paired distances of the closest adversarial found (median, how many samples
each way found none, how many distances differ by more than 10 %). Asserts nothing.

The two runs share the attack's seed but not its noise vectors (each inference draws from the
global generator, so the streams part after the first call): a distance that differs is not by
itself a weaker search; the medians and the unbroken counts are what to compare.

Usage (the first 12 samples of the mnist board's subset):
    .venv/bin/python benchmarks/noise_eot.py attack_suites/mnist.yaml mnist/eabs --n 12
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from robustgen_bench import zoo
from robustgen_bench.attacks import make_attack
from robustgen_bench.config import load_suite
from robustgen_bench.data import load_tensors, subset_indices
from robustgen_bench.report.render import format_rate
from robustgen_bench.stats import mcnemar_pvalue


def _acc(correct: Sequence[bool] | torch.Tensor) -> str:
    """Accuracy of a bool vector (list or tensor) with its Wilson interval."""
    return format_rate(int(sum(bool(c) for c in correct)), len(correct), digits=1)


def _found(d: float | None) -> bool:
    """A closest adversarial was found (unbroken samples store no or an infinite distance)."""
    return d is not None and bool(np.isfinite(d))


def _median(d: list[float | None]) -> str:
    found = [v for v in d if _found(v)]
    return f"{statistics.median(found):.3f}" if found else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="a suite file with a GaussianNoise attack")
    ap.add_argument("model", help="a randomized zoo id of the suite, e.g. mnist/eabs")
    ap.add_argument("--attack", default="noise", help="the suite's id of the noise attack")
    ap.add_argument("--n", type=int, default=12, help="first n samples of the suite's subset")
    ap.add_argument("--eot", type=int, default=1, help="surrogate draws of the cheap search")
    args = ap.parse_args()

    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    (spec,) = [a for a in suite.attacks if a.id == args.attack]
    entry = zoo.get_entry(args.model)
    if not entry.adaptive.randomized:
        raise SystemExit(f"{args.model} is deterministic: it is searched with one draw already")
    defense = zoo.build_defense(entry).eval()
    x_all, y_all = load_tensors(entry.dataset, suite.dataset.split, None)
    idx = subset_indices(len(x_all), suite.dataset.n, suite.dataset.seed)[:args.n].tolist()
    x, y = x_all[idx], y_all[idx]
    torch.manual_seed(0)
    with torch.no_grad():
        clean = defense.predict(x).argmax(1)
    # spec is as the runner gets it: the suite's surrogate and verify draws merged in
    ways = {f"eot {entry.adaptive.eot} (boards)": replace(spec, eot=None),
            f"eot {args.eot}": replace(spec, eot=args.eot)}
    rows, cpu = {}, {}
    for name, s in ways.items():
        torch.manual_seed(0)
        t0 = time.process_time()
        rows[name] = make_attack(s)(defense, entry.adaptive, x, y, idx, clean)
        cpu[name] = time.process_time() - t0
    (a_name, a), (b_name, b) = rows.items()
    attacked = [i for i, r in enumerate(a) if r.clean_pred == r.label]
    print(f"{args.model}, {spec.attack} {dict(spec.params)} eps={spec.epsilon}, verify draws "
          f"{spec.verify_draws}; first {args.n} samples of the {suite.name} subset "
          f"({len(attacked)} attacked)")
    print("| surrogate | CPU s | robust accuracy [95 % Wilson] | median distance | none found |")
    print("|---|---:|---|---:|---:|")
    for name, r in rows.items():
        d = [r[i].distance for i in attacked]
        none = sum(not _found(v) for v in d)
        print(f"| {name} | {cpu[name]:.1f} | {_acc([r[i].adv_correct for i in attacked])} "
              f"| {_median(d)} | {none} |")
    print(f"ratio (boards / eot {args.eot}): {cpu[a_name] / cpu[b_name]:.2f}x")
    ra = [a[i].adv_correct for i in attacked]
    rb = [b[i].adv_correct for i in attacked]
    print(f"verdicts at eps agree on {sum(p == q for p, q in zip(ra, rb))} of {len(attacked)}; "
          f"McNemar p = {mcnemar_pvalue(np.array(ra), np.array(rb)):.3g}")
    pairs = [(a[i].distance, b[i].distance) for i in attacked
             if _found(a[i].distance) and _found(b[i].distance)]
    off = sum(abs(p - q) > 0.1 * p for p, q in pairs)
    closer = sum(q < p for p, q in pairs)
    print(f"distances found both ways: {len(pairs)}; differ by > 10 %: {off}; "
          f"eot {args.eot} closer on {closer}, farther on {sum(q > p for p, q in pairs)}")


if __name__ == "__main__":
    main()
