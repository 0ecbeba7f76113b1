"""How much the one-sample score of E-ABS's variational inference costs in clean accuracy.

For one zoo entry with ``variational: true``, on the first N test images: the deployed ``predict``
(one reparameterised sample at the optimum, eq. 2.6), the same optimum scored at its mean, and
the best starting candidate scored at its mean (no optimisation); plus the mean posterior σ after
the optimisation and the encoder's own σ. Prints figures; asserts nothing.

Usage:
    .venv/bin/python benchmarks/eabs_inference_noise.py [ZOO_ID] [--n 200] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from robustgen_bench import zoo
from robustgen_bench.data import load_tensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entry", nargs="?", default="mnist/eabs")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    entry = zoo.get_entry(args.entry)
    d = zoo.build_defense(entry)
    if not getattr(d, "cfg", None) or not d.cfg.variational:
        raise SystemExit(f"{args.entry} does not use variational inference")
    x, y = load_tensors(entry.dataset, "test")
    x, y = x[:args.n], y[:args.n]

    def acc(logits: torch.Tensor) -> float:
        return 100.0 * (logits.argmax(1) == y).float().mean().item()

    with torch.no_grad():
        deployed = acc(d.predict(x))
        state = d.optimise(x)
        recs, priors = d._objective(x.flatten(1), state, torch.zeros_like(state.mu))
        at_mean = acc(d._logits(x, recs, priors))
        start = d.initial_latents(x)
        recs, priors = d._objective(x.flatten(1), start, torch.zeros_like(start.mu))
        candidate = acc(d._logits(x, recs, priors))
        sigma = torch.exp(0.5 * state.logvar).mean().item()
        enc_sigma = torch.exp(0.5 * d.nets.encoders[0].latent(x)[1]).mean().item()
    print(f"{args.entry}: first {args.n} test images, {d.cfg.steps} steps at lr {d.cfg.lr}")
    print(f"  deployed predict (one sample)     {deployed:6.1f} %")
    print(f"  optimum scored at its mean        {at_mean:6.1f} %")
    print(f"  best candidate only, at its mean  {candidate:6.1f} %")
    print(f"  posterior sigma after optimisation {sigma:.3f}; encoder sigma {enc_sigma:.3f}")


if __name__ == "__main__":
    main()
