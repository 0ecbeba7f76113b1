"""Choose E-ABS's inner-optimisation schedule on validation images (never the test split).

For one variational zoo entry and each combination of ``--steps`` (inner Adam steps), ``--lr``
(the Adam rate of the posterior mean) and ``--logvar-lr`` (the Adam rate of its log-variance;
``none`` = ``lr``, the behaviour before the key existed), on the first N
images of the entry's own validation split (``train.val_fraction`` of the training set, held out
with ``train.seed`` exactly as its recipe held it out), in this process, on the same weights:

- the deployed ``predict`` accuracy (one reparameterised sample at the optimum, eq. 2.6) with its
  Wilson interval, and the accuracy of the same optimum scored at its mean;
- the distribution of the optimised posterior σ (mean over latent dimensions) of the true class
  (quantiles), which shows that the variance is still optimised rather than fixed;
- the mean |one-sample score - mean score| of the true class, relative to the score's spread
  over classes (how noisy the deployed score is), and the CPU seconds per sample.

Prints a Markdown table; asserts nothing. Usage:
    .venv/bin/python benchmarks/eabs_inference_schedule.py mnist/eabs --n 300 --logvar-lr none 0.2 0.5
    .venv/bin/python benchmarks/eabs_inference_schedule.py mnist/eabs --n 500 --steps 0 25 50 100 --lr 0.05
    .venv/bin/python benchmarks/eabs_inference_schedule.py mnist/eabs --n 1000 --weights OLD.safetensors
(``--weights``: other weights of the same entry, e.g. an earlier epoch's from git, to decide on
validation images whether further training helped.)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from robustgen_bench import zoo
from robustgen_bench.data import load_tensors
from robustgen_bench.stats import wilson_interval
from robustgen_bench.train.loop import train_val_split


def validation_images(entry: zoo.ZooEntry, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the entry's validation split: x (n, C, H, W), y (n,)."""
    x, y = load_tensors(entry.dataset, "train")
    frac = float(entry.train.get("val_fraction", 0.1))
    _, (xv, yv) = train_val_split(x, y, frac, int(entry.train.get("seed", 0)))
    return xv[:n], yv[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entry", nargs="?", default="mnist/eabs")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--logvar-lr", nargs="+", default=None,
                    help="values ('none' = lr); default: the entry's")
    ap.add_argument("--steps", nargs="+", type=int, default=None, help="default: the entry's")
    ap.add_argument("--lr", nargs="+", type=float, default=None, help="default: the entry's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None,
                    help="a safetensors file to use instead of the entry's weights (same config)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    entry = zoo.get_entry(args.entry)
    d = zoo.build_defense(entry)
    if args.weights is not None:
        d.load_weight_files({"weights": Path(args.weights)})  # strict; the candidate cache follows
    if not getattr(d, "cfg", None) or not d.cfg.variational:
        raise SystemExit(f"{args.entry} does not use variational inference")
    x, y = validation_images(entry, args.n)
    base = d.cfg
    d.build_cache()  # the one-off candidate decoding is not part of any row's cost
    weights = args.weights or "the entry's weights"
    print(f"{args.entry} ({weights}): first {len(y)} validation images, steps {base.steps}, lr {base.lr}")
    steps_list = args.steps or [base.steps]
    lr_list = args.lr or [base.lr]
    lv_list = args.logvar_lr or ["none" if base.logvar_lr is None else str(base.logvar_lr)]
    print("| steps | lr | logvar_lr | deployed accuracy [95% Wilson] | scored at the mean | σ of the true class: "
          "median (10 %, 90 %) | |one-sample − mean score| / class spread | CPU s/sample |")
    print("|---|---|---|---|---|---|---|---|")
    n = len(y)
    idx = torch.arange(n)
    grid = [(s, m, v) for s in steps_list for m in lr_list for v in lv_list]
    for steps, mean_lr, value in grid:
        lr = None if value == "none" else float(value)
        d.cfg = dataclasses.replace(base, steps=steps, lr=mean_lr, logvar_lr=lr)
        torch.manual_seed(args.seed)
        c0 = time.process_time()
        with torch.no_grad():
            xp = d._prepare(x)
            state = d.optimise(xp)
            xf = xp.flatten(1)
            sample = d._logits(xp, *d.final_terms(xf, state))  # the deployed one-sample score
            mean_state = dataclasses.replace(state, logvar=None)
            recs, _ = d._objective(xf, mean_state, None)
            # the prior at the mean: the AAE term at μ (or the KL of the optimised q without noise)
            _, priors = d._objective(xf, state, torch.zeros_like(state.mu))
            mean = d._logits(xp, recs, priors)
        cpu = time.process_time() - c0
        k = int((sample.argmax(1) == y).sum())
        lo, hi = wilson_interval(k, n)
        k_mean = int((mean.argmax(1) == y).sum())
        sigma = torch.exp(0.5 * state.logvar[y, idx]).mean(-1)  # (n,) true class
        q = torch.quantile(sigma, torch.tensor([0.1, 0.5, 0.9]))
        spread = mean.std(1).clamp_min(1e-12)
        noise = ((sample - mean)[idx, y].abs() / spread).mean()
        shown = "none (= lr)" if lr is None else f"{lr:g}"
        print(f"| {steps} | {mean_lr:g} | {shown} | {100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] | {100 * k_mean / n:.1f} % "
              f"| {q[1]:.3f} ({q[0]:.3f}, {q[2]:.3f}) | {noise:.3f} | {cpu / n:.2f} |", flush=True)
    d.cfg = base


if __name__ == "__main__":
    main()
