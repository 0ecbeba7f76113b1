"""Paired clean accuracy of a VRS entry and its base on a whole test set, with McNemar's exact test.

    RGBENCH_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/vrs_paired_clean.py fashion-mnist/vrs-cnn

Prints both accuracies and the 2x2 table [[both right, base only], [VRS only, both wrong]].
"""

from __future__ import annotations

import argparse

import torch
from statsmodels.stats.contingency_tables import mcnemar

from robustgen_bench.data import load_tensors
from robustgen_bench.zoo import build_defense, get_entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vrs_id")
    ap.add_argument("--n", type=int, default=10000)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machines are shared; one thread is also the fastest here
    entry = get_entry(args.vrs_id)
    vrs = build_defense(entry)  # builds and verifies the base entry too
    x, y = load_tensors(entry.dataset, "test")
    x, y = x[: args.n], y[: args.n]
    with torch.no_grad():
        pv = torch.cat([vrs.predict(x[i:i + 500]).argmax(1) for i in range(0, len(y), 500)])
        pb = torch.cat([vrs.base.predict(x[i:i + 500]).argmax(1) for i in range(0, len(y), 500)])
    cv, cb = pv == y, pb == y
    table = [[int((cb & cv).sum()), int((cb & ~cv).sum())], [int((~cb & cv).sum()), int((~cb & ~cv).sum())]]
    print(f"{args.vrs_id} n={len(y)}: base {cb.float().mean():.4f}, VRS {cv.float().mean():.4f}, "
          f"table {table}, McNemar exact p = {mcnemar(table, exact=True).pvalue:.3g}")


if __name__ == "__main__":
    main()
