"""CPU seconds per attack step on ABS-family defenses: full hook vs warm-started hook.

One attack step is one surrogate forward + backward (the EOT draws included) on a batch. For each
zoo id, in this process, on the same batch: the full hook (the defense's whole inference every
step) and the warm hook (``WarmStart(steps=k)``: previous step's solution, k inner steps), over
``--steps`` consecutive small L2 steps along the sign of the gradient (a PGD-like path, so the
warm hook sees what it sees in an attack). Also reports how far the warm logits are from the full
hook's on the same inputs (max |difference| relative to the logit spread) and whether the argmax
agrees. The figures are CPU time of this process (steadier than wall time on a shared machine).

Usage:
    .venv/bin/python benchmarks/attack_step_cost.py mnist/abs-schott2019 mnist/abs mnist/eabs \\
        --n 10 --steps 5 --warm-steps 5
"""

from __future__ import annotations

import argparse
import time

import torch

from robustgen_bench import zoo
from robustgen_bench.adaptive import Surrogate, WarmStart
from robustgen_bench.data import load_tensors


def path_costs(surrogate: Surrogate, x: torch.Tensor, y: torch.Tensor, steps: int,
               step: float) -> tuple[list[float], list[torch.Tensor]]:
    """CPU seconds of each of ``steps`` forward+backward calls along a fixed path, and logits."""
    costs, logits = [], []
    xi = x.clone()
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(x.shape, generator=g)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    for _ in range(steps):
        xr = xi.clone().requires_grad_(True)
        t0 = time.process_time()
        out = surrogate(xr)
        out.gather(1, y.view(-1, 1)).sum().backward()
        costs.append(time.process_time() - t0)
        logits.append(out.detach())
        xi = (xi + step * direction).clamp(0, 1)  # the same path for both hooks
    return costs, logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", nargs="+")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="attack steps timed per hook")
    ap.add_argument("--warm-steps", type=int, default=5)
    ap.add_argument("--step", type=float, default=0.15, help="L2 length of one path step")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| model | EOT | full hook CPU s/step | warm hook (k = {args.warm_steps}) CPU s/step "
          "| ratio | warm argmax = full | max |Δ logit| / logit std |")
    print("|---|---|---|---|---|---|---|")
    for mid in args.ids:
        entry = zoo.get_entry(mid)
        defense = zoo.build_defense(entry).eval()
        x, y = load_tensors(entry.dataset, "test", None)
        x, y = x[:args.n], y[:args.n]
        defense.predict(x[:1])  # builds the candidate cache outside the timings
        for p in defense.parameters():
            p.requires_grad_(False)
        torch.manual_seed(0)
        full_c, full_l = path_costs(Surrogate(defense, entry.adaptive.eot), x, y, args.steps,
                                    args.step)
        torch.manual_seed(0)
        warm = Surrogate(defense, entry.adaptive.eot, warm=WarmStart(steps=args.warm_steps))
        warm_c, warm_l = path_costs(warm, x, y, args.steps, args.step)
        # the first warm call is cold (the full inference): steady state is the later steps
        f, w = sum(full_c[1:]) / (args.steps - 1), sum(warm_c[1:]) / (args.steps - 1)
        agree = sum(int((a.argmax(1) == b.argmax(1)).sum()) for a, b in zip(full_l[1:], warm_l[1:]))
        total = args.n * (args.steps - 1)
        dev = max(float(((a - b).abs() / a.std(dim=1, keepdim=True)).max())
                  for a, b in zip(full_l[1:], warm_l[1:]))
        print(f"| {mid} | {entry.adaptive.eot} | {f / args.n:.3f} per sample | "
              f"{w / args.n:.3f} per sample | ×{f / w:.1f} | {agree}/{total} | {dev:.3f} |",
              flush=True)
        assert warm.calls["warm"] == args.steps - 1, warm.calls


if __name__ == "__main__":
    main()
