"""Throughput of ABS-family inference (samples/s) on the first N MNIST test images.

For each zoo id: the first ``predict`` of a freshly built defense (including the one-off
candidate-cache build), a second ``predict`` (cache reused), and a naive per-class baseline run
in the same process on the same networks: every class separately, candidate search by explicit
pairwise differences, its own Adam loop and backward pass. Both wall-clock and process CPU time
are printed: on a shared machine CPU time is the steadier figure.

Usage:
    .venv/bin/python benchmarks/abs_throughput.py [ZOO_ID ...] [--n 100] [--threads 1] [--no-naive]

Default ids: mnist/abs mnist/eabs (entries without weights are reported and skipped).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from robustgen_bench import zoo
from robustgen_bench.data import load_tensors
from robustgen_bench.defenses.abs import ABSDefense, LatentState
from robustgen_bench.errors import UserInputError


def naive_predict(d: ABSDefense, x: torch.Tensor, cand_chunk: int = 500) -> torch.Tensor:
    """Reference per-class implementation of ``d.predict``: x (N, C, H, W) → logits (N, K).

    Same algorithm and settings (encoder candidate and binarisation included), no batching over
    classes and no matrix-product candidate search.
    """
    if d._cand_images is None:
        d.build_cache()
    cfg = d.cfg
    x = d._prepare(x)
    xf = x.flatten(1)
    logits = []
    for k in range(d.num_classes):
        with torch.no_grad():
            best = []
            for i in range(0, cfg.n_init, cand_chunk):  # (N, chunk) by explicit differences
                g = d._cand_images[k, i:i + cand_chunk]
                s = (xf[:, None, :] - g[None]).pow(2).sum(-1) + cfg.beta * d._cand_prior[k, i:i + cand_chunk]
                best.append(s)
            scores = torch.cat(best, 1)
            mu = d._cand_z[scores.argmin(1)].clone()  # (N, L)
            logvar = torch.zeros_like(mu) if cfg.variational else None
            if cfg.encoder_candidate:
                encs = d.nets.encoders
                e_mu, e_lv = (encs[0] if len(encs) == 1 else encs[k]).latent(x)
                val = (xf - d._decode(k, e_mu).flatten(1)).pow(2).sum(-1) + cfg.beta * d._prior(k, e_mu)
                better = val < scores.min(1).values
                mu[better] = e_mu[better]
                if logvar is not None:
                    logvar[better] = e_lv[better]
        state = LatentState(mu=mu[None], logvar=None if logvar is None else logvar[None])
        params = [state.mu.requires_grad_(True)] + ([state.logvar.requires_grad_(True)] if logvar is not None else [])
        opt = torch.optim.Adam(params, lr=cfg.lr)
        for _ in range(cfg.steps):
            opt.zero_grad()
            z = state.mu[0]
            if state.logvar is not None:
                z = z + torch.exp(0.5 * state.logvar[0]) * torch.randn_like(z)
            rec = d._decode(k, z).flatten(1)
            if state.logvar is not None and not cfg.aae:
                lv = state.logvar[0]
                prior = 0.5 * (state.mu[0].pow(2) + lv.exp() - lv - 1.0).sum(-1)
            else:
                prior = d._prior(k, z)
            loss = ((xf - rec).pow(2).sum(-1) + cfg.beta * prior).sum() / xf.shape[1]
            loss.backward()
            opt.step()
            if cfg.radius is not None:
                with torch.no_grad():
                    n = state.mu.norm(dim=-1, keepdim=True)
                    state.mu.mul_(torch.clamp(cfg.radius / n.clamp_min(1e-12), max=1.0))
        with torch.no_grad():
            z = state.mu[0]
            if state.logvar is not None:
                z = z + torch.exp(0.5 * state.logvar[0]) * torch.randn_like(z)
            if state.logvar is not None and not cfg.aae:
                lv = state.logvar[0]
                prior = 0.5 * (state.mu[0].pow(2) + lv.exp() - lv - 1.0).sum(-1)
            else:
                prior = d._prior(k, z)
            s = (xf - d._decode(k, z).flatten(1)).pow(2).sum(-1) + cfg.beta * prior
            logits.append(-s * d._score_scale(xf.shape[1]) * d.class_scales[k])
    return torch.stack(logits, 1)


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ids", nargs="*", default=["mnist/abs", "mnist/eabs"])
    ap.add_argument("--n", type=int, default=100, help="first N test images (one batch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-naive", action="store_true", help="skip the per-class baseline")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, n {args.n}")
    for eid in args.ids:
        try:
            entry = zoo.get_entry(eid)
            d = zoo.build_defense(entry)
        except UserInputError as e:
            print(f"{eid}: skipped ({e})")
            continue
        if not isinstance(d, ABSDefense):
            print(f"{eid}: skipped (family {entry.family} is not ABS-like)")
            continue
        x, y = load_tensors(entry.dataset, "test")
        x, y = x[: args.n], y[: args.n]
        torch.manual_seed(0)
        first, w1, c1 = _timed(lambda: d.predict(x))
        torch.manual_seed(0)
        second, w2, c2 = _timed(lambda: d.predict(x))
        n = len(x)
        acc = (second.argmax(1) == y).float().mean().item()
        print(f"{eid}: accuracy {acc:.3f} on {n}")
        print(f"  incl. cache build: {n / w1:7.2f} samples/s wall ({w1:.1f} s), {n / c1:7.2f} samples/s CPU ({c1:.1f} s)")
        print(f"  excl. cache build: {n / w2:7.2f} samples/s wall ({w2:.1f} s), {n / c2:7.2f} samples/s CPU ({c2:.1f} s)")
        if not args.no_naive:
            torch.manual_seed(0)
            naive, w3, c3 = _timed(lambda: naive_predict(d, x))
            agree = (naive.argmax(1) == second.argmax(1)).float().mean().item()
            print(f"  naive per-class:   {n / w3:7.2f} samples/s wall ({w3:.1f} s), {n / c3:7.2f} samples/s CPU ({c3:.1f} s)")
            print(f"  speed-up batched/naive: wall x{w3 / w2:.2f}, CPU x{c3 / c2:.2f}; "
                  f"prediction agreement {agree:.3f}, max |logit diff| {(naive - second).abs().max():.2e}")


if __name__ == "__main__":
    main()
