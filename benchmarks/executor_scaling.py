"""The same small suite run in this process and on a local Ray instance: wall time and agreement.

Runs SUITE (default: mnist/abs, clean + 10-step L2 PGD on 16 test images, batches of 4) twice
into fresh run directories — once with the local executor, once with ``RayExecutor(num_cpus=W)``
— and prints wall seconds, the speed-up and whether the stored rows are identical (they must be).
Ray's start-up and each worker's imports and candidate cache are inside the Ray figure: it is
what a user waits for. Run it on an otherwise idle machine: Ray workers run at niceness 15.

Usage:
    .venv/bin/python benchmarks/executor_scaling.py [--workers 2] [--n 16] [--model mnist/abs]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from robustgen_bench.config import load_suite
from robustgen_bench.executors import RayExecutor
from robustgen_bench.runner import run_suite
from robustgen_bench.store import read_results

SUITE = """\
name: executor-scaling
dataset: {{name: mnist, split: test, n: {n}, seed: 0}}
models: [{model}]
run: {{batch_size: {bs}, verify_draws: 3}}
attacks:
  - {{id: pgd-l2, library: foolbox, attack: L2PGD, threat: l2, epsilon: 1.5, steps: {steps}, rel_stepsize: 0.1}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default="mnist/abs")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "suite.yaml").write_text(SUITE.format(n=args.n, model=args.model,
                                                      bs=args.batch_size, steps=args.steps))
        suite = load_suite(root / "suite.yaml")
        t0 = time.perf_counter()
        run_suite(suite, root / "local")
        local = time.perf_counter() - t0
        t0 = time.perf_counter()
        ex = RayExecutor(num_cpus=args.workers)
        try:
            run_suite(suite, root / "ray", executor=ex)
        finally:
            ex.close()
        ray_s = time.perf_counter() - t0
        a, b = read_results(root / "local"), read_results(root / "ray")
        same = a.shape == b.shape and a.equals(b)
        if not same:
            pd.testing.assert_frame_equal(a, b)  # shows the first difference
    print(f"{args.model}, {args.n} samples, batches of {args.batch_size}, clean + {args.steps}-step L2 PGD")
    print(f"local executor           {local:8.1f} s wall")
    print(f"ray executor, {args.workers} workers  {ray_s:8.1f} s wall (start-up included)")
    print(f"speed-up                 {local / ray_s:8.2f}x; rows identical: {same}")


if __name__ == "__main__":
    main()
