"""The same small suite run in this process, in worker processes and on a local Ray instance:
wall time and agreement.

Runs SUITE (default: mnist/abs, clean + 10-step L2 PGD on 16 test images, batches of 4) into
fresh run directories — with the local executor, with ``ProcessExecutor(workers=W)`` and (when
Ray is installed) with ``RayExecutor(num_cpus=W)`` — and prints wall seconds, the speed-up over
the local run and whether the stored rows are identical to it (they must be). Start-up and each
worker's imports and candidate cache are inside the pool figures: it is what a user waits for.
Run it on an otherwise idle machine (Ray workers run at niceness 15).

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
from robustgen_bench.executors import ProcessExecutor, RayExecutor
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
        a = read_results(root / "local")
        pools = {"processes": lambda: ProcessExecutor(workers=args.workers)}
        try:
            import ray  # noqa: F401

            pools["ray"] = lambda: RayExecutor(num_cpus=args.workers)
        except ModuleNotFoundError:
            pass
        timed: dict[str, tuple[float, bool]] = {}
        for name, make in pools.items():
            t0 = time.perf_counter()
            ex = make()
            try:
                run_suite(suite, root / name, executor=ex)
            finally:
                ex.close()
            b = read_results(root / name)
            same = a.shape == b.shape and a.equals(b)
            if not same:
                pd.testing.assert_frame_equal(a, b)  # shows the first difference
            timed[name] = (time.perf_counter() - t0, same)
    print(f"{args.model}, {args.n} samples, batches of {args.batch_size}, clean + {args.steps}-step L2 PGD")
    print(f"local executor                {local:8.1f} s wall")
    for name, (secs, same) in timed.items():
        print(f"{name:9s} executor, {args.workers} workers {secs:8.1f} s wall (start-up included): "
              f"x{local / secs:.2f}; rows identical: {same}")


if __name__ == "__main__":
    main()
