"""GAN-ABS trade-off between reconstruction quality and accuracy (thesis Tables 3.1 and 3.2 shapes).

Table 3.1 shape: for each inference method (Direct, Enc, Enc-D, and their "+" variants when
asked) and λ, the error rate and the mean in-domain distance, i.e. D(x, G(z*_y, y)) at the true
class y (squared L2, and the eq. 3.6 feature distance when a feature network is available).
Table 3.2 shape: error rate vs the number of optimisation steps for one method, with the in- and
out-of-domain distances (out-of-domain: the mean over the other classes' reconstructions).
A PNG next to the Markdown plots error rate against in-domain distance (Figure 3.5 shape).

Every row runs the deployed ``predict`` path of the ``gan-abs`` family on the first ``--n`` test
images, with the GAN (and encoders) of the named zoo entries. Prints Markdown and writes it, with
the command that produced it, to ``--out``.

    python benchmarks/gan_abs_tradeoff.py --n 100 --methods direct=mnist/gan-abs \
        enc=mnist/gan-abs-enc enc-d=mnist/gan-abs-enc-d --plus --out leaderboards/gan_abs_tradeoff.md
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
from robustgen_bench.stats import wilson_interval
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
    """Error rate (with a Wilson 95 % interval) and mean distances of ``d`` on x (N, 1, 28, 28), y (N,).

    In-domain: ||x - G(z*_y, y)||² at the true class y; out-of-domain: the mean over the other
    classes; ``feat_*`` the same with the eq. 3.6 feature distance of ``feature``'s network.
    """
    wrong, sums = 0, {"l2_in": 0.0, "l2_out": 0.0, "feat_in": 0.0, "feat_out": 0.0}
    t0 = time.time()
    for i in range(0, len(y), d.settings.batch_size):
        xb, yb = x[i:i + d.settings.batch_size], y[i:i + d.settings.batch_size]
        inv = d.invert(xb)
        with torch.no_grad():
            logits = -d.class_losses(xb, inv)
            wrong += int((logits.argmax(1) != yb).sum())
            rec = d._generate(inv.z, inv.offsets)  # (N, K, C, H, W): column k is class k
            n, k = rec.shape[:2]
            own = torch.zeros(n, k, dtype=torch.bool)
            own[torch.arange(n), yb] = True
            dist = {"l2": (rec - xb[:, None]).pow(2).flatten(2).sum(2)}  # (N, K)
            if feature is not None and feature.feature_net is not None:
                net = feature.feature_net
                fx = [f.repeat_interleave(k, 0) for f in net.features(xb)]
                dist["feat"] = feature_distance(fx, net.features(rec.flatten(0, 1))).view(n, k)
            for name, dd in dist.items():
                sums[f"{name}_in"] += float(dd[own].sum())
                sums[f"{name}_out"] += float(dd[~own].view(n, k - 1).mean(1).sum())
    n = len(y)
    low, high = wilson_interval(wrong, n)
    out = {"error": wrong / n, "error_low": low, "error_high": high, "seconds": time.time() - t0}
    out |= {key: v / n for key, v in sums.items() if feature is not None or not key.startswith("feat")}
    return out


def method_name(initialiser: str, plus: bool) -> str:
    """'enc-d', True -> 'Enc-D+' (the thesis's spelling)."""
    return {"direct": "Direct", "enc": "Enc", "enc-d": "Enc-D"}[initialiser] + ("+" if plus else "")


def plot_tradeoff(rows: list[dict[str, object]], path: Path, title: str) -> None:
    """Figure 3.5 shape: error rate vs in-domain L2² per method, one point per λ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(str(r["method"]) for r in rows):
        pts = [r for r in rows if r["method"] == name]
        ax.plot([float(r["l2_in"]) for r in pts], [100 * float(r["error"]) for r in pts],
                marker="o", linestyle="--" if name.endswith("+") else "-", label=name)
        for r in pts:
            ax.annotate(f"λ={float(r['lam']):g}", (float(r["l2_in"]), 100 * float(r["error"])),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("in-domain ||x − G(z*, y)||²")
    ax.set_ylabel("error rate (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="first n test images")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--methods", nargs="+", default=["direct=mnist/gan-abs"],
                    help="initialiser=entry pairs; the entry supplies the GAN (and encoder)")
    ap.add_argument("--plus", action="store_true", help="also run the '+' variant of each method")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    ap.add_argument("--steps", type=int, default=100, help="optimisation steps for Table 3.1")
    ap.add_argument("--steps-sweep", type=int, nargs="*", default=[10, 50, 100, 500])
    ap.add_argument("--sweep-method", default=None, help="method for Table 3.2 (default: last)")
    ap.add_argument("--sweep-lam", type=float, default=0.1)
    ap.add_argument("--feature-entry", default=None, help="entry whose feature_net measures eq. 3.6")
    ap.add_argument("--out", type=Path, default=Path("leaderboards/gan_abs_tradeoff.md"),
                    help="Markdown file; the Figure 3.5-shape plot goes next to it as .png")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    methods = dict(m.split("=", 1) for m in a.methods)
    x, y = load_tensors(a.dataset, "test")
    x, y = x[: a.n], y[: a.n]
    feature = build_method(a.feature_entry, "direct", distance="feature") if a.feature_entry else None
    feat_head = " in-domain feature | out-of-domain feature |" if feature else ""

    def cells(r: dict[str, float]) -> str:
        c = (f" {100 * r['error']:.1f} [{100 * r['error_low']:.1f}, {100 * r['error_high']:.1f}] |"
             f" {r['l2_in']:.2f} | {r['l2_out']:.2f} |")
        if feature:
            c += f" {r['feat_in']:.1f} | {r['feat_out']:.1f} |"
        return c + f" {r['seconds']:.0f} |"

    command = " ".join(shlex.quote(s) for s in ["python", sys.argv[0], *(argv or sys.argv[1:])])
    lines = [f"# GAN-ABS trade-off on {a.dataset} (first {a.n} test images)", "",
             f"Command: `{command}`", "",
             f"## Error rate and distances per inference method and λ ({a.steps} steps, "
             "Table 3.1 shape)", "",
             "Error rate in % with its Wilson 95 % interval. In-domain: ||x − G(z*_y, y)||² at the "
             "true class y; out-of-domain: its mean over the other nine classes"
             + ("; feature: the eq. 3.6 distance" if feature else "") + ". Seconds: one core.", ""]
    head = "| method | λ | error rate % [95 % CI] | in-domain L2² | out-of-domain L2² |" + feat_head \
        + " seconds |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    rows: list[dict[str, object]] = []
    variants = [(m, False) for m in methods] + ([(m, True) for m in methods] if a.plus else [])
    for m, plus in variants:
        for lam in a.lams:
            d = build_method(methods[m], m, lam=lam, steps=a.steps, plus_variant=plus)
            r = evaluate(d, x, y, feature)
            rows.append({"method": method_name(m, plus), "lam": lam} | r)
            row = f"| {method_name(m, plus)} | {lam:g} |" + cells(r)
            print(row, flush=True)
            lines.append(row)
    sweep = a.sweep_method or list(methods)[-1]
    lines += ["", f"## Error rate vs optimisation steps ({method_name(sweep, False)}, "
              f"λ = {a.sweep_lam:g}; Table 3.2 shape)", "",
              head.replace("| method | λ |", "| steps |"), "|" + "---|" * (head.count("|") - 2)]
    for steps in a.steps_sweep:
        d = build_method(methods[sweep], sweep, lam=a.sweep_lam, steps=steps)
        r = evaluate(d, x, y, feature)
        row = f"| {steps} |" + cells(r)
        print(row, flush=True)
        lines.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    png = a.out.with_suffix(".png")
    if len(rows) > 1:  # one point is not a trade-off curve
        plot_tradeoff(rows, png, f"GAN-ABS on {a.dataset}: error vs in-domain distance "
                                 f"(first {a.n}, {a.steps} steps)")
        lines[4:4] = [f"![error rate vs in-domain distance]({png.name})", ""]
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
