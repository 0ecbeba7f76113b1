"""Gradient-masking sanity check: the base model's own APGD examples, transferred to its VRS wrapper.

    RGBENCH_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/vrs_transfer.py mnist/vrs-cnn --n 50 --eps 0.1

If VRS were more accurate under its adaptive attack than on these transferred examples, the adaptive
gradient would be worse than a plain transfer: a sign of masked gradients.
Uses the suite's subset (mnist test, seed 0), so the first n images match ``attack_suites/vrs.yaml``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from robustgen_bench.data import load_subset
from robustgen_bench.zoo import build_defense, get_entry


class _BaseLogits(nn.Module):
    """The base defense's differentiable logits, (N, C, H, W) -> (N, K)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.surrogate_logits(x)


def main() -> None:
    from pyautoattack import AutoAttack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vrs_id")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    entry = get_entry(args.vrs_id)
    vrs = build_defense(entry)
    s = load_subset(entry.dataset, "test", args.n, 0)
    aa = AutoAttack(_BaseLogits(vrs.base), eps=args.eps, norm="Linf", version="standard", seed=0,
                    device="cpu")
    aa.attacks_to_run = ["apgd-ce", "apgd-t"]
    x_adv, _ = aa.run_standard_evaluation(s.x, s.y, batch_size=args.n)
    torch.manual_seed(0)
    with torch.no_grad():
        base_acc = (vrs.base.predict(x_adv).argmax(1) == s.y).float().mean().item()
        vrs_acc = torch.stack([vrs.predict(x_adv).argmax(1) == s.y for _ in range(args.draws)])
    print(f"{args.vrs_id} n={args.n} eps={args.eps}: base accuracy on its own APGD examples "
          f"{base_acc:.2f}; VRS accuracy on them {vrs_acc.float().mean().item():.2f} "
          f"(mean of {args.draws} draws)")


if __name__ == "__main__":
    main()
