"""CPU seconds per attack step on ABS-family defenses: full hook vs warm-started hook.

One attack step is one surrogate forward + backward (the EOT draws included) on a batch. For each
zoo id, in this process, on the same batch: the full hook (the defense's whole inference every
step) and the warm hook (``WarmStart(steps=k)``: previous step's solution, k inner steps), over
``--steps`` consecutive small L2 steps along the sign of the gradient (a PGD-like path, so the
warm hook sees what it sees in an attack). Also reports how far the warm logits are from the full
hook's on the same inputs (max |difference| relative to the logit spread) and whether the argmax
agrees. The figures are CPU time of this process (steadier than wall time on a shared machine).

With ``--predict N`` it measures the deployed ``predict`` instead, on the first N test images:
the reference networks (``fused_inference = False``) against the inference copies with BatchNorm
folded and ELU via exp (``defenses/fused.py``), same weights, same process, samples per CPU
second, and how many predictions agree (deterministic entries: identical argmax; randomized
entries: accuracy of each with a Wilson interval and the exact McNemar p-value of correctness).

Usage:
    .venv/bin/python benchmarks/attack_step_cost.py mnist/abs-schott2019 mnist/abs mnist/eabs \\
        --n 10 --steps 5 --warm-steps 5
    .venv/bin/python benchmarks/attack_step_cost.py mnist/abs-schott2019 mnist/abs mnist/eabs \\
        --predict 1000
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import time

import torch

from robustgen_bench import zoo
from robustgen_bench.adaptive import Surrogate, WarmStart
from robustgen_bench.data import load_tensors
from robustgen_bench.report.render import format_rate
from robustgen_bench.stats import mcnemar_pvalue


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


def _timed_predict(defense: torch.nn.Module, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    """Argmax predictions (N,) of ``defense.predict`` in batches and the process CPU seconds."""
    t0 = time.process_time()
    pred = torch.cat([defense.predict(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return pred, time.process_time() - t0


def _acc(correct: Sequence[bool] | torch.Tensor) -> str:
    """Accuracy of a bool vector (list or tensor) with its Wilson interval."""
    return format_rate(int(sum(bool(c) for c in correct)), len(correct), digits=2)


def predict_speed(ids: list[str], n: int, batch: int) -> None:
    """Reference vs fused ``predict`` on the first n test images (see the module docstring)."""
    print("| model | reference samples/CPU-s | fused samples/CPU-s | ratio | predictions |")
    print("|---|---|---|---|---|")
    for mid in ids:
        entry = zoo.get_entry(mid)
        defense = zoo.build_defense(entry).eval()
        if not hasattr(defense, "fused_inference"):
            print(f"| {mid} | (no fused inference for family {entry.family}) | | | |")
            continue
        x, y = load_tensors(entry.dataset, "test", None)
        x, y = x[:n], y[:n]
        defense.predict(x[:1])  # candidate cache and fused copies outside the timings
        defense.fused_inference = False
        defense.predict(x[:1])
        torch.manual_seed(0)
        ref, t_ref = _timed_predict(defense, x, batch)
        defense.fused_inference = True
        defense.predict(x[:1])  # its own candidates (switching the variant drops them)
        torch.manual_seed(0)
        new, t_new = _timed_predict(defense, x, batch)
        if getattr(defense, "randomized", False):
            a, b = ref == y, new == y
            what = (f"accuracy {_acc(a)} vs {_acc(b)}; correct only in reference / only fused "
                    f"{int((a & ~b).sum())} / {int((~a & b).sum())}, McNemar p = "
                    f"{mcnemar_pvalue(a.numpy(), b.numpy()):.2g}")
        else:
            what = (f"{int((ref == new).sum())}/{n} identical argmax; accuracy "
                    f"{_acc(ref == y)} vs {_acc(new == y)}")
        print(f"| {mid} | {n / t_ref:.2f} | {n / t_new:.2f} | ×{t_ref / t_new:.2f} | {what} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", nargs="+")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="attack steps timed per hook")
    ap.add_argument("--warm-steps", type=int, default=5)
    ap.add_argument("--step", type=float, default=0.15, help="L2 length of one path step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--predict", type=int, metavar="N",
                    help="time the deployed predict (reference vs fused) on N images instead")
    ap.add_argument("--batch", type=int, default=100, help="predict batch size (--predict)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.predict:
        predict_speed(args.ids, args.predict, args.batch)
        return
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
