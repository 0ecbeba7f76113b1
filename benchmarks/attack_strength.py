"""PGD strength on ABS-family defenses before and after the scale-free loss and best iterate.

For each zoo id, the same samples, the same seeds (so the same random starts), two runs of
foolbox PGD through rgbench's attack base class (every invariant applies):

* ``ce``: cross-entropy, as rgbench's PGD was before (foolbox's default loss);
* ``margin``: the margin loss, rgbench's default now.

Each run tracks the best iterate, and the benchmark also re-verifies the *last* iterate on its
own (with the deployed ``predict``, as the base class does), so every run gives two columns:
``last`` (foolbox's output only: rgbench before) and ``best`` (last or best iterate: rgbench
now). "ce / last" is the old rgbench and "margin / best" the new one; "margin / last" splits the
change into the share of the loss and the share of the best iterate. Per-sample discordant
counts and exact McNemar p-values compare the columns pairwise.

Usage:
    .venv/bin/python benchmarks/attack_strength.py mnist/abs-schott2019 mnist/abs \\
        --threat l2 --epsilon 1.5 --n 100 --steps 20 --rel-stepsize 0.1 --out leaderboards/x.md
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from robustgen_bench import zoo
from robustgen_bench.adaptive import WarmStart
from robustgen_bench.attacks import AttackSpec, make_attack
from robustgen_bench.attacks.verification import majority_vote, predict_draws
from robustgen_bench.data import load_tensors
from robustgen_bench.report.render import format_rate
from robustgen_bench.stats import mcnemar_pvalue
from robustgen_bench.threat import Threat

ATTACKS = {Threat.L2: "L2PGD", Threat.LINF: "LinfPGD"}
VARIANTS = ("ce/last", "ce/best", "margin/last", "margin/best")


def run_model(entry_id: str, threat: Threat, eps: float, n: int, steps: int, rel: float,
              batch: int, verify_draws: int, random_start: bool,
              losses: tuple[str, ...] = ("ce", "margin"),
              warm: WarmStart | None = None, partial: Path | None = None,
              first: int = 0) -> dict[str, object]:
    """Per-sample robust outcomes (bool lists over test images first..n-1) per variant.

    ``first`` > 0 runs a shard of the samples (batch seeds come from the sample indices, so two
    shards give the rows of one run over both; ``--compare`` joins shard files).

    With ``partial``, the outcomes are saved there after every batch and a restarted run
    continues after the last saved batch (each batch is seeded from its sample indices, so the
    resumed rows are the ones an uninterrupted run would give).
    """
    entry = zoo.get_entry(entry_id)
    defense = zoo.build_defense(entry).eval()
    x, y = load_tensors(entry.dataset, "test", None)
    x, y = x[first:n], y[first:n]
    randomized = bool(entry.adaptive.randomized or getattr(defense, "randomized", False))
    draws = verify_draws if randomized else 1
    torch.manual_seed(0)  # a randomized defense's clean draws too are the same on a resumed run
    clean = torch.cat([predict_draws(defense, x[i:i + batch], 1)[0] for i in range(0, len(x), batch)])
    out: dict[str, object] = {"clean": (clean == y).tolist(), "seconds": {}, "first": first}
    state: dict[str, dict[str, object]] = {}
    if partial is not None and partial.exists():
        state = json.loads(partial.read_text())
        if state.get("n") != n or state.get("first", 0) != first:
            raise SystemExit(f"{partial}: saved for other samples (n, first); remove it")
    state["n"], state["first"], state["model"] = n, first, entry_id  # type: ignore[assignment]
    for loss in losses:
        spec = AttackSpec(id=f"pgd-{loss}", library="foolbox", attack=ATTACKS[threat],
                          threat=threat, epsilon=eps, verify_draws=verify_draws, seed=0,
                          surrogate=warm,
                          params=MappingProxyType({"steps": steps, "rel_stepsize": rel,
                                                   "loss": loss, "best_iterate": True,
                                                   "random_start": random_start}))
        attack = make_attack(spec)
        finals: list[torch.Tensor] = []
        inner_run = attack._run

        def capture(model, xs, ys, _run=inner_run, _finals=finals):  # noqa: ANN001
            o = _run(model, xs, ys)
            _finals.append(o.x_adv.detach())
            return o

        attack._run = capture  # type: ignore[method-assign]  # instrumentation only
        saved = state.get(loss, {"best": [], "last": [], "seconds": 0.0})
        best, last = list(saved["best"]), list(saved["last"])  # type: ignore[call-overload]
        if len(best) % batch and len(best) < len(x):
            raise SystemExit(f"{partial}: {len(best)} samples saved, not a multiple of --batch {batch}")
        t0 = time.process_time() - float(saved["seconds"])  # type: ignore[arg-type]
        for i in range(len(best), len(x), batch):
            xs, ys, cs = x[i:i + batch], y[i:i + batch], clean[i:i + batch]
            finals.clear()
            rows = attack(defense, entry.adaptive, xs, ys,
                          list(range(first + i, first + i + len(xs))), cs)
            best += [r.adv_correct for r in rows]
            attacked = torch.nonzero(cs == ys).flatten()
            robust_last = (cs == ys).clone()
            if len(attacked):
                xa = finals[0]
                dist = threat.norm(xa - xs[attacked]).double()
                ok = (dist <= eps + 1e-6) & (xa.flatten(1).amin(1) >= 0) & (xa.flatten(1).amax(1) <= 1)
                with torch.random.fork_rng():  # per-batch seed: a resumed run draws the same
                    torch.manual_seed(1_000_003 * (first + i) + 17)
                    votes = majority_vote(predict_draws(defense, xa, draws), ys[attacked])
                robust_last[attacked] = ~(ok & (votes != ys[attacked]))
            last += robust_last.tolist()
            if partial is not None:
                state[loss] = {"best": best, "last": last, "seconds": time.process_time() - t0}
                partial.write_text(json.dumps(state))
            print(f"  {entry_id} {loss}: {first + i + len(xs)}/{n}", flush=True)
        out["seconds"][loss] = time.process_time() - t0  # type: ignore[index]
        out[f"{loss}/best"], out[f"{loss}/last"] = best, last
    return out


def _acc(correct: Sequence[bool] | torch.Tensor) -> str:
    """Accuracy of a bool vector (list or tensor) with its Wilson interval."""
    return format_rate(int(sum(bool(c) for c in correct)), len(correct), digits=0)


def _pair(a: list[bool], b: list[bool]) -> str:
    """'b01 / b10, p': a robust & b broken, a broken & b robust, exact McNemar p."""
    aa, bb = np.array(a), np.array(b)
    return f"{int(np.sum(aa & ~bb))} / {int(np.sum(~aa & bb))}, p = {mcnemar_pvalue(aa, bb):.2g}"


def _as_results(path: Path) -> dict[str, dict[str, object]]:
    """A result file as written by --out, or a run's ``.partial.json`` (the finished batches of
    an unfinished run), as {model: {"index": sample indices, column: outcomes, "seconds": ...}}."""
    data = json.loads(path.read_text())
    if "n" in data and "first" in data:  # a partial file: one model, its losses so far
        mid = data.get("model") or path.name.split(".")[-4].replace("_", "/", 1)
        r: dict[str, object] = {"seconds": {}}
        for loss, st in data.items():
            if isinstance(st, dict):
                r[f"{loss}/best"], r[f"{loss}/last"] = st["best"], st["last"]
                r["seconds"][loss] = st["seconds"]  # type: ignore[index]
                r["index"] = list(range(data["first"], data["first"] + len(st["best"])))
        return {mid: r}
    out = {}
    for mid, r in data.items():
        first = int(r.get("first", 0))
        out[mid] = {**r, "index": list(range(first, first + len(r["clean"])))}
    return out


def _load_joined(spec: str) -> dict[str, dict[str, object]]:
    """A result file, or comma-separated shard files (finished or partial) joined into one."""
    joined: dict[str, dict[str, object]] = {}
    for part in spec.split(","):
        for mid, r in _as_results(Path(part)).items():
            j = joined.setdefault(mid, {"seconds": {}})
            for key, v in r.items():
                if key == "seconds":
                    for loss, sec in v.items():
                        j["seconds"][loss] = j["seconds"].get(loss, 0.0) + sec  # type: ignore[union-attr]
                else:
                    j[key] = list(j.get(key, [])) + list(v)  # type: ignore[call-overload]
    return joined


def compare(a_file: Path, b_file: Path, column: str = "margin/best") -> str:
    """Markdown rows comparing ``column`` of two result files on the samples both hold.

    Either side may be comma-separated shard files (``--first``) or ``.partial.json`` files of
    unfinished runs; samples are matched by index, and the table says how many are compared.
    """
    a, b = _load_joined(str(a_file)), _load_joined(str(b_file))
    a_file, b_file = (Path(str(f).split(",")[0]) for f in (a_file, b_file))  # names for the header
    lines = [f"| model | n | {a_file.name} | {b_file.name} | robust only in {a_file.name} / only "
             f"in {b_file.name}, McNemar | CPU s per sample ({a_file.name}, {b_file.name}) |",
             "|---|---|---|---|---|---|"]
    for mid in a:
        if mid not in b:
            continue
        pos_a = {i: k for k, i in enumerate(a[mid]["index"])}  # type: ignore[arg-type]
        pos_b = {i: k for k, i in enumerate(b[mid]["index"])}  # type: ignore[arg-type]
        common = sorted(set(pos_a) & set(pos_b))
        va = [a[mid][column][pos_a[i]] for i in common]  # type: ignore[index]
        vb = [b[mid][column][pos_b[i]] for i in common]  # type: ignore[index]
        ca = a[mid]["seconds"]["margin"] / len(pos_a)  # type: ignore[index]
        cb = b[mid]["seconds"]["margin"] / len(pos_b)  # type: ignore[index]
        lines.append(f"| {mid} | {len(common)} | {_acc(va)} | {_acc(vb)} | {_pair(va, vb)} "
                     f"| {ca:.2f}, {cb:.2f} |")
    return "\n".join(lines) + "\n"


def report(results: dict[str, dict[str, object]], args: argparse.Namespace) -> str:
    head = (f"PGD-{args.threat} ε = {args.epsilon:g}, {args.steps} steps, step "
            f"{args.rel_stepsize:g}·ε, random start {'on' if args.random_start else 'off'}, "
            f"first {args.n} MNIST test images, seed 0 (same random starts for both losses)")
    lines = [f"### {head}", "",
             "| model | clean | ce / last (before) | ce / best | margin / last | margin / best (now) "
             "| before→now: broken only now / only before, McNemar | share of the loss "
             "(ce/last→margin/last) | share of the best iterate (margin/last→margin/best) "
             "| CPU s (ce, margin) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mid, r in results.items():
        if not all(k in r for k in VARIANTS):  # a run of one loss: its two columns only
            cols = [k for k in VARIANTS if k in r]
            lines.append(f"| {mid} | {_acc(r['clean'])} | " + ", ".join(
                f"{k}: {_acc(r[k])}" for k in cols) + f" | CPU s {r['seconds']} |")
            continue
        v = {k: r[k] for k in VARIANTS}
        sec = r["seconds"]
        lines.append(
            f"| {mid} | {_acc(r['clean'])} | " + " | ".join(_acc(v[k]) for k in VARIANTS)
            + f" | {_pair(v['ce/last'], v['margin/best'])} | {_pair(v['ce/last'], v['margin/last'])}"
            f" | {_pair(v['margin/last'], v['margin/best'])} | {sec['ce']:.0f}, {sec['margin']:.0f} |")
    lines += ["", "Robust accuracy with Wilson 95 % intervals; a pair 'a / b' counts samples robust "
              "under the left variant and broken under the right one, then the reverse."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", nargs="*")
    ap.add_argument("--threat", choices=["l2", "linf"], default="l2")
    ap.add_argument("--epsilon", type=float, default=1.5)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--first", type=int, default=0,
                    help="attack samples first..n-1 only (a shard; --compare joins shard files)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rel-stepsize", type=float, default=0.1)
    ap.add_argument("--no-random-start", dest="random_start", action="store_false")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--verify-draws", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the Markdown table here (and a .json beside)")
    ap.add_argument("--losses", default="ce,margin", help="comma-separated: ce, margin, dlr")
    ap.add_argument("--warm", type=int, metavar="K",
                    help="attack through the warm-started surrogate with K inner steps")
    ap.add_argument("--compare", nargs=2, type=Path, metavar="JSON",
                    help="only compare the margin/best columns of two earlier --out .json files")
    args = ap.parse_args()
    if args.compare:
        print(compare(*args.compare))
        return
    if not args.ids:
        ap.error("give zoo ids to attack, or --compare A.json B.json")
    torch.set_num_threads(args.threads)
    results = {}
    warm = WarmStart(steps=args.warm) if args.warm else None
    for mid in args.ids:
        results[mid] = run_model(mid, Threat(args.threat), args.epsilon, args.n, args.steps,
                                 args.rel_stepsize, args.batch, args.verify_draws,
                                 args.random_start, tuple(args.losses.split(",")), warm,
                                 partial=(args.out.with_suffix(f".{mid.replace('/', '_')}"
                                                               f".{args.threat}.partial.json")
                                          if args.out else None), first=args.first)
        text = report(results, args)
        print(text, flush=True)
        if args.out:  # after every model, so a stopped run keeps what it finished
            args.out.write_text(text)
            args.out.with_suffix(f".{args.threat}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
