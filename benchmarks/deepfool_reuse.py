"""DeepFool on ABS-family entries: time with and without reusing the inner solution z*.

foolbox's DeepFool calls the model once per candidate class in every step, on the same input.
Inside ``Surrogate.reusing_solutions`` (what the DeepFool adapter uses) the inner optimisation
runs once per step and only the cheap differentiable part is repeated. This script runs the same
attack (same seed, same samples) both ways in one process and prints wall and CPU seconds, the
ratio, and whether the rows agree (they must, exactly, for a deterministic entry).

Usage:
    .venv/bin/python benchmarks/deepfool_reuse.py [ZOO_ID] [--n 5] [--steps 5] [--candidates 10]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from types import MappingProxyType

import torch

from robustgen_bench import zoo
from robustgen_bench.adaptive import Surrogate
from robustgen_bench.attacks import AttackSpec, make_attack
from robustgen_bench.data import load_tensors
from robustgen_bench.threat import Threat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entry", nargs="?", default="mnist/abs")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    entry = zoo.get_entry(args.entry)
    defense = zoo.build_defense(entry)
    x, y = load_tensors(entry.dataset, "test")
    x, y = x[:args.n], y[:args.n]
    clean = defense.predict(x).argmax(1)  # also builds the candidate cache outside the timing
    spec = AttackSpec(id="deepfool-l2", library="foolbox", attack="L2DeepFoolAttack",
                      threat=Threat.L2, epsilon=1.5,
                      params=MappingProxyType({"steps": args.steps, "candidates": args.candidates}))
    idx = list(range(args.n))

    def timed() -> tuple[float, float, list]:
        w0, c0 = time.perf_counter(), time.process_time()
        rows = make_attack(spec)(defense, entry.adaptive, x, y, idx, clean)
        return time.perf_counter() - w0, time.process_time() - c0, rows

    w_reuse, c_reuse, rows_reuse = timed()
    original = Surrogate.reusing_solutions
    Surrogate.reusing_solutions = lambda self: contextlib.nullcontext(self)  # type: ignore[method-assign]
    try:
        w_plain, c_plain, rows_plain = timed()
    finally:
        Surrogate.reusing_solutions = original  # type: ignore[method-assign]

    print(f"{args.entry}: L2 DeepFool, {args.n} images, {args.steps} steps, {args.candidates} candidates, "
          f"{args.threads} thread(s), EOT {entry.adaptive.eot}")
    print(f"  reuse z*     : {w_reuse:8.1f} s wall {c_reuse:8.1f} s CPU")
    print(f"  solve per call: {w_plain:8.1f} s wall {c_plain:8.1f} s CPU")
    print(f"  speed-up (CPU): x{c_plain / max(c_reuse, 1e-9):.2f}")
    same = [(r.adv_pred, r.distance) for r in rows_reuse] == [(r.adv_pred, r.distance) for r in rows_plain]
    print(f"  identical rows: {same}" + ("" if not entry.adaptive.randomized else
                                          " (randomized entry: draws differ between runs)"))


if __name__ == "__main__":
    main()
