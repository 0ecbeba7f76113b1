"""GAN-ABS trade-off between reconstruction quality and accuracy (thesis Tables 3.1 and 3.2 shapes).

Table 3.1 shape: for each inference method (Direct, Enc, Enc-D, and their "+" variants when
asked) and λ, the error rate and the mean in-domain distance, i.e. D(x, G(z*_y, y)) at the true
class y (squared L2, and the eq. 3.6 feature distance when a feature network is available).
Table 3.2 shape: error rate vs the number of optimisation steps for one method.

Every row runs the deployed ``predict`` path of the ``gan-abs`` family on the first ``--n`` test
images, with the GAN (and encoders) of the named zoo entries. Prints Markdown and writes it, with
the command that produced it, to ``--out``.

    python benchmarks/gan_abs_tradeoff.py --n 100 --methods direct=mnist/gan-abs \
        enc-d=mnist/gan-abs-enc-d --out leaderboards/gan_abs_tradeoff.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from robustgen_bench.data import load_tensors
from robustgen_bench.defenses.gan_abs import (
    GanAbs,
    GanGeometry,
    InferenceSettings,
    feature_distance,
)
from robustgen_bench.zoo import fetch_weights, get_entry


def build_method(entry_id: str, initialiser: str, **overrides: object) -> GanAbs:
    """A GanAbs with ``entry_id``'s geometry and weights, its config overridden by ``overrides``."""
    entry = get_entry(entry_id)
    cfg = dict(entry.config) | {"initialiser": initialiser} | overrides
    d = GanAbs(GanGeometry.from_config(cfg), InferenceSettings.from_config(cfg))
    d.load_weight_files(fetch_weights(entry))
    return d.eval()


def evaluate(d: GanAbs, x: torch.Tensor, y: torch.Tensor,
             feature: GanAbs | None) -> dict[str, float]:
    """Error rate and mean in-domain distances of ``d`` on x (N, 1, 28, 28), y (N,)."""
    wrong, l2, feat = 0, 0.0, 0.0
    t0 = time.time()
    for i in range(0, len(y), d.settings.batch_size):
        xb, yb = x[i:i + d.settings.batch_size], y[i:i + d.settings.batch_size]
        inv = d.invert(xb)
        with torch.no_grad():
            logits = -d.class_losses(xb, inv)
            wrong += int((logits.argmax(1) != yb).sum())
            # Reconstructions for every class (column k is class k), then the true class's.
            rec = d._generate(inv.z, inv.offsets)[torch.arange(len(yb)), yb]
            l2 += float((rec - xb).pow(2).flatten(1).sum(1).sum())
            if feature is not None and feature.feature_net is not None:
                net = feature.feature_net
                feat += float(feature_distance(net.features(xb), net.features(rec)).sum())
    n = len(y)
    out = {"error": wrong / n, "l2_in": l2 / n, "seconds": time.time() - t0}
    if feature is not None:
        out["feat_in"] = feat / n
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="first n test images")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--methods", nargs="+", default=["direct=mnist/gan-abs"],
                    help="initialiser=entry pairs; the entry supplies the GAN (and encoder)")
    ap.add_argument("--plus", action="store_true", help="also run the '+' variant of each method")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    ap.add_argument("--steps", type=int, default=50, help="optimisation steps for Table 3.1")
    ap.add_argument("--steps-sweep", type=int, nargs="*", default=[0, 10, 25, 50, 100])
    ap.add_argument("--sweep-method", default=None, help="method for Table 3.2 (default: last)")
    ap.add_argument("--sweep-lam", type=float, default=0.1)
    ap.add_argument("--feature-entry", default=None, help="entry whose feature_net measures eq. 3.6")
    ap.add_argument("--out", type=Path, default=Path("leaderboards/gan_abs_tradeoff.md"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    methods = dict(m.split("=", 1) for m in a.methods)
    x, y = load_tensors(a.dataset, "test")
    x, y = x[: a.n], y[: a.n]
    feature = build_method(a.feature_entry, "direct", distance="feature") if a.feature_entry else None

    lines = [f"# GAN-ABS trade-off on {a.dataset} (first {a.n} test images)", "",
             "Command: `python " + " ".join(shlex.quote(s) for s in [sys.argv[0], *(argv or sys.argv[1:])])
             + "`", "",
             f"## Error rate and in-domain distance per inference method and λ ({a.steps} steps, "
             "Table 3.1 shape)", "",
             "In-domain distance: ||x - G(z*_y, y)||² at the true class y"
             + (", and the eq. 3.6 feature distance" if feature else "") + ".", ""]
    head = "| method | λ | error rate | in-domain L2² |" + (" in-domain feature |" if feature else "") \
        + " seconds |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    variants = [(m, False) for m in methods] + ([(m, True) for m in methods] if a.plus else [])
    for m, plus in variants:
        for lam in a.lams:
            d = build_method(methods[m], m, lam=lam, steps=a.steps, plus_variant=plus)
            r = evaluate(d, x, y, feature)
            name = m.capitalize().replace("Enc-d", "Enc-D") + ("+" if plus else "")
            row = f"| {name} | {lam:g} | {r['error']:.3f} | {r['l2_in']:.2f} |" \
                + (f" {r['feat_in']:.3f} |" if feature else "") + f" {r['seconds']:.0f} |"
            print(row, flush=True)
            lines.append(row)
    sweep = a.sweep_method or list(methods)[-1]
    lines += ["", f"## Error rate vs optimisation steps ({sweep}, λ={a.sweep_lam:g}; Table 3.2 shape)",
              "", "| steps | error rate | in-domain L2² | seconds |", "|---|---|---|---|"]
    for steps in a.steps_sweep:
        d = build_method(methods[sweep], sweep, lam=a.sweep_lam, steps=steps)
        r = evaluate(d, x, y, None)
        row = f"| {steps} | {r['error']:.3f} | {r['l2_in']:.2f} | {r['seconds']:.0f} |"
        print(row, flush=True)
        lines.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
