"""Plan, compute and store the attack-failure checks of a finished run.

:func:`run_checks` reads the run directory only (manifest + store), so ``rgbench checks
RUN_DIR`` works on any run, also one written before checks existed (defaults apply). Each
check's result is stored as soon as it is computed; stored results are reused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.checks import from_rows, probes
from robustgen_bench.checks.result import ALL_THREATS, CheckResult
from robustgen_bench.checks.spec import CHECK_NAMES, MODEL_LEVEL, ChecksSpec
from robustgen_bench.checks.storage import check_key, read_checks, write_check
from robustgen_bench.stats import CLEAN, clean_correct, format_epsilon
from robustgen_bench.store import read_cell_counters, read_draws, read_manifest
from robustgen_bench.threat import Threat

LOG = logging.getLogger(__name__)
Log = Callable[[str], None]


@dataclass(frozen=True)
class Planned:
    name: str
    model: str
    threat: str
    cells: tuple[str, ...]
    key: str


def attack_specs(manifest: Mapping[str, Any]) -> list[AttackSpec]:
    """The run's attack specs, one per (attack id, epsilon), back from the manifest: everything
    that keys a cell (the warm surrogate, a per-attack EOT and a sweep point included), so that
    a probe re-runs the attack the run ran."""
    from types import MappingProxyType

    from robustgen_bench.adaptive import WarmStart

    out = []
    for a in (manifest.get("suite") or {}).get("attacks", []):
        warm = a.get("surrogate")
        sweep = a.get("sweep") or {}
        out.append(AttackSpec(id=a["id"], library=a["library"], attack=a["attack"],
                              threat=Threat(a["threat"]), epsilon=float(a["epsilon"]),
                              params=MappingProxyType(dict(a.get("params") or {})),
                              verify_draws=int(a.get("verify_draws", 5)),
                              seed=int(a.get("seed", 0)),
                              surrogate=None if warm is None else WarmStart(
                                  steps=int(warm["warm_steps"]), radius=float(warm["radius"])),
                              eot=None if a.get("eot") is None else int(a["eot"]),
                              sweep_of=sweep.get("of"),
                              sweep=tuple((k, v) for k, v in sweep.get("values", ()))))
    return out


def transfer_source(cs: ChecksSpec, manifest: Mapping[str, Any]) -> str | None:
    """The zoo id of the transfer source: the suite's, or for ``auto`` ``<dataset>/cnn``."""
    from robustgen_bench.zoo import entry_ids

    src = cs.transfer_from
    if src == "auto":
        src = f"{(manifest.get('dataset') or {}).get('name')}/cnn"
        return src if src in entry_ids() else None
    return src


def plan_checks(df: pd.DataFrame, manifest: Mapping[str, Any], cs: ChecksSpec,
                names: Sequence[str] | None = None) -> list[Planned]:
    """Every (check, model, threat) the run needs, with its cells and storage key."""
    models = [m for m in (manifest.get("suite") or {}).get("models", []) if m in set(df.model)]
    models += [m for m in dict.fromkeys(df.model) if m not in models]
    ds = manifest.get("dataset") or {}
    samples = f"{ds.get('indices_hash')}:{ds.get('n')}"
    settings = cs.canonical()
    settings.pop("enabled", None)
    settings.pop("skip", None)
    src = transfer_source(cs, manifest)
    out = []
    for name in [n for n in cs.active if names is None or n in names]:
        for m in models:
            sub = df[df.model == m]
            clean = tuple(sorted(set(sub[sub.attack == CLEAN].cell_key)))
            threats = [ALL_THREATS] if name in MODEL_LEVEL else [
                t for t in ("linf", "l2") if (sub.threat == t).any()]
            for t in threats:
                part = sub if t == ALL_THREATS else sub[sub.threat == t]
                cells = tuple(sorted(set(clean) | set(part.cell_key)))
                extra = {"transfer_from": src} if name == "transfer" else {}
                out.append(Planned(name, m, t, cells,
                                   check_key(name, m, t, cells, {**settings, **extra}, samples)))
    return out


class _Context:
    """What the checks of one run share: rows, specs, data, defenses (built lazily)."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any], df: pd.DataFrame, cs: ChecksSpec,
                 data_dir: str | Path | None) -> None:
        self.run_dir, self.manifest, self.df, self.cs = run_dir, manifest, df, cs
        self.data_dir = data_dir
        self.specs = attack_specs(manifest)
        self.first_spec = {}
        for s in self.specs:
            self.first_spec.setdefault(s.id, s)
        self._counters: dict[str, dict[str, int]] | None = None
        self._defenses: dict[str, Any] = {}
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        suite_run = (manifest.get("suite") or {}).get("run") or {}
        self.verify_draws = int(suite_run.get("verify_draws", 5))

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        if self._counters is None:
            self._counters = read_cell_counters(self.run_dir)
        return self._counters

    def defense(self, model: str) -> tuple[Any, Any]:
        from robustgen_bench.errors import RuntimeFailure
        from robustgen_bench.zoo import build_defense, get_entry

        if model not in self._defenses:
            entry = get_entry(model)
            recorded = {m.get("id"): m for m in self.manifest.get("models", [])}.get(model)
            if recorded is not None and recorded.get("weights_sha256") not in (
                    None, [w.sha256 for w in entry.weights]):
                raise RuntimeFailure(f"{model}: the zoo entry's weights differ from the ones the "
                                     "run evaluated; probes would test another model")
            defense = build_defense(entry).eval()
            self._defenses = {model: (defense, entry.adaptive)}  # one at a time (memory)
        return self._defenses[model]

    def source(self, model: str) -> tuple[Any, Any]:
        from robustgen_bench.zoo import build_defense, get_entry

        key = "source:" + model
        if key not in self._defenses:
            entry = get_entry(model)
            self._defenses[key] = (build_defense(entry).eval(), entry.adaptive)
        return self._defenses[key]

    def subsample(self, model: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The first ``subsample`` clean-correct samples of the model, in subset order."""
        from robustgen_bench.data import load_tensors

        ds = self.manifest.get("dataset") or {}
        if self._data is None:
            self._data = load_tensors(ds["name"], ds.get("split", "test"), self.data_dir)
        cc = clean_correct(self.df, model)
        order = [int(i) for i in ds.get("indices") or cc.index]
        ok = {int(i) for i in cc.index[cc.values]}
        chosen = [i for i in order if i in ok][: self.cs.subsample]
        t = torch.tensor(chosen, dtype=torch.long)
        x, y = self._data
        return x[t], y[t], chosen

    def strongest(self, model: str, threat: str, bounded_form: bool = False) -> AttackSpec | None:
        """The bounded white-box attack of the threat with the lowest robust accuracy at its
        largest budget (suite order breaks ties). With ``bounded_form``, a suite without one
        falls back to its minimal-norm white-box attacks that have a bounded form at a cell's
        budget (``Attack.bounded_params``; e.g. a PGD budget search as one PGD at epsilon), so
        that probes which re-run an attack at the cell's budget apply to them too."""
        found = self._strongest(model, threat, minimal=False)
        if found is None and bounded_form:
            found = self._strongest(model, threat, minimal=True)
            if found is not None:
                found = probes.bounded_form(found)
        return found

    def _strongest(self, model: str, threat: str, minimal: bool) -> AttackSpec | None:
        best: tuple[float, int, AttackSpec] | None = None
        for order, (aid, spec) in enumerate(self.first_spec.items()):
            if (spec.threat.value != threat or from_rows.is_black_box(spec)
                    or from_rows.is_minimal_norm(spec) != minimal
                    or minimal and probes.bounded_form(spec) is None):
                continue
            rows = self.df[(self.df.model == model) & (self.df.attack == aid)]
            if not len(rows):
                continue
            eps = float(rows.epsilon.max())
            cell = rows[rows.epsilon == eps]
            acc = float(cell.adv_correct.mean())
            spec_at = next(s for s in self.specs if s.id == aid and math.isclose(s.epsilon, eps))
            if best is None or (acc, order) < best[:2]:
                best = (acc, order, spec_at)
        return None if best is None else best[2]

    def stored_robust(self, model: str, spec: AttackSpec, samples: Sequence[int]) -> np.ndarray:
        rows = self.df[(self.df.model == model) & (self.df.attack == spec.id)
                       & np.isclose(self.df.epsilon.astype(float), spec.epsilon)]
        s = rows.drop_duplicates("sample_index").set_index("sample_index").adv_correct
        return s.reindex(list(samples)).astype(bool).values


def _fraction_status(value: float, threshold: float, bad: str = "warn") -> str:
    return bad if value > threshold + 1e-12 else "pass"


def compute(p: Planned, ctx: _Context) -> CheckResult:
    """One check (its exceptions propagate; :func:`run_checks` turns them into ``error``)."""
    cs, df = ctx.cs, ctx.df
    m, t = p.model, p.threat

    def result(status: str, figure: str, detail: dict[str, Any] | None = None) -> CheckResult:
        return CheckResult(p.name, m, t, status, figure, detail or {}, p.cells)

    if p.name == "monotone":
        r = from_rows.monotone(df, ctx.first_spec, m, t, cs)
        return result(r.status, r.figure, r.detail)
    if p.name == "blackbox":
        r = from_rows.blackbox(df, ctx.first_spec, m, t, cs)
        return result(r.status, r.figure, r.detail)
    if p.name == "silent":
        r = from_rows.silent(df, ctx.first_spec, m, t, ctx.counters, cs)
        return result(r.status, r.figure, r.detail)

    if p.name == "transfer":
        src = transfer_source(cs, ctx.manifest)
        if src is None:
            return result("skip", "no transfer source (checks.transfer_from) in the zoo")
        if src == m:
            return result("skip", f"{m} is the transfer source itself")
        spec = ctx.strongest(m, t, bounded_form=True)
        if spec is None:
            return result("skip", "no bounded white-box attack to transfer with")
    elif p.name in ("unbounded", "convergence"):
        # the unbounded check reads minimal-norm attacks from their rows (no probe needed)
        spec = ctx.strongest(m, t, bounded_form=p.name == "convergence")
        if spec is None and p.name == "unbounded":
            return _unbounded_from_rows(p, ctx)
        if spec is None:
            return result("skip", "no bounded white-box attack for this threat")

    x, y, idx = ctx.subsample(m)
    if not len(idx):
        return result("skip", "no clean-correct sample to probe")
    defense, adaptive = ctx.defense(m)
    randomized = bool(adaptive.randomized or getattr(defense, "randomized", False))

    if p.name == "gradients":
        g = probes.gradients(defense, adaptive, x, y)
        frac = (g["zero"] + g["nonfinite"]) / g["samples"]
        return result(_fraction_status(frac, cs.threshold("zero_gradients")),
                      f"{g['zero']} zero and {g['nonfinite']} non-finite margin gradients in "
                      f"{g['samples']} samples ({100 * frac:.0f}%)", {**g, "fraction": frac})
    if p.name == "range":
        r = probes.output_range(defense, adaptive, x)
        which = [k for k, v in r.items() if v]
        return result("warn" if which else "pass",
                      ("outputs look like probabilities (rows in [0, 1] summing to 1): "
                       + ", ".join(which)) if which else "outputs are logits, not probabilities",
                      r)
    if p.name == "randomness":
        if randomized:
            rows = from_rows.draw_disagreement(df, read_draws(ctx.run_dir, p.cells), m)
            r = probes.doubled_draws(defense, x, y, ctx.verify_draws, seed=len(idx))
            frac = r["flips"] / r["samples"]
            problems = []
            if adaptive.eot < 2:
                problems.append(f"declared randomized with eot={adaptive.eot} (expected >= 2)")
            if frac > cs.threshold("draw_flips") + 1e-12:
                problems.append("verify_draws too few")
            stored = (f"{100 * rows['fraction']:.0f}% of {rows['rows']} stored attack verdicts "
                      "had disagreeing draws" if rows["rows"] else "no stored attack verdicts")
            figure = (f"randomized: {stored}; clean accuracy {100 * r['accuracy']:.0f}% with "
                      f"{r['draws']} draws vs {100 * r['accuracy_doubled']:.0f}% with "
                      f"{2 * r['draws']} ({r['flips']} verdicts flip)")
            if problems:
                figure += "; " + "; ".join(problems)
            return result("warn" if problems else "pass", figure,
                          {"stored": rows, "probe": r, "eot": adaptive.eot})
        r = probes.repeat_predict(defense, x)
        return result("warn" if r["differs"] else "pass",
                      (f"declared deterministic but {r['repeats']} predict calls differ: "
                       f"{r['prediction_changes']} of {r['samples']} predictions change, max "
                       f"probability difference {r['max_prob_difference']:.2g}") if r["differs"]
                      else f"deterministic: {r['repeats']} predict calls agree on {r['samples']} samples",
                      r)
    if p.name == "unbounded":
        r = probes.unbounded(spec, defense, adaptive, x, y, idx)
        frac = r["survivors"] / r["samples"]
        return result(_fraction_status(frac, cs.threshold("unbounded_survival"), "fail"),
                      f"{r['survivors']} of {r['samples']} samples survive {spec.id} at "
                      f"ε={r['epsilon']:.3g} ({100 * frac:.0f}%)", {**r, "fraction": frac})
    if p.name == "convergence":
        stored = ctx.stored_robust(m, spec, idx)
        r = probes.convergence(spec, stored, defense, adaptive, x, y, idx, cs.alpha)
        if not r["variants"]:
            return result("skip", f"{spec.id} has no steps, restarts or EOT to double", r)
        parts = [f"{v['variant']}: {100 * v['accuracy']:.0f}% (p={v['p']:.2g})" for v in r["variants"]]
        status = "warn" if any(v["significant"] for v in r["variants"]) else "pass"
        if from_rows.is_minimal_norm(spec):  # re-run as one bounded attack at the cell's budget
            from robustgen_bench.attacks import get_attack_class

            form = get_attack_class(spec.library, spec.attack).bounded_params(spec.epsilon) or {}
            r["bounded_form"] = form
            parts = [f"as {', '.join(f'{k}={v:g}' for k, v in form.items())}"] + parts
        status, note = from_rows.underpowered(status, r["samples"], cs.alpha)
        return result(status, note + f"{spec.id} ε={format_epsilon(spec.epsilon)} on {r['samples']} "
                      f"samples: stored {100 * r['accuracy']:.0f}%; " + "; ".join(parts), r)
    if p.name == "transfer":
        src = transfer_source(cs, ctx.manifest)
        sdef, sad = ctx.source(src)
        per_eps = []
        for s in [s for s in ctx.specs if s.id == spec.id]:
            if from_rows.is_minimal_norm(s):
                s = probes.bounded_form(s)  # adversarials within this budget
                assert s is not None  # strongest() only picks attacks that have one
            other = probes.transfer(s, sdef, sad, defense, randomized, x, y, idx)
            white = _white_broken(ctx, m, t, s.epsilon, idx)
            if white is None:
                continue
            per_eps.append(from_rows.paired("transfer", m, t, pd.Series(other, index=idx),
                                            white, cs.alpha, s.epsilon))
        if not per_eps:
            return result("skip", "no white-box results at the transfer budgets")
        w = max(per_eps, key=lambda r: (r["significant"], r["only_transfer"], -r["p"]))
        status = "warn" if any(r["significant"] for r in per_eps) else "pass"
        status, note = from_rows.underpowered(status, w["n"], cs.alpha)
        return result(status, note + f"{w['only_transfer']} of {w['n']} samples broken only by "
                      f"{spec.id} transferred from {src} vs {w['only_whitebox']} only by white-box "
                      f"at ε={format_epsilon(w['epsilon'])} (McNemar p={w['p']:.3g})",
                      {"source": src, "attack": spec.id, "per_epsilon": per_eps})
    raise ValueError(f"unknown check {p.name!r}")


def _white_broken(ctx: _Context, model: str, threat: str, eps: float,
                  samples: Sequence[int]) -> pd.Series | None:
    index = pd.Index(list(samples))
    parts = []
    for aid, spec in ctx.first_spec.items():
        if spec.threat.value != threat or from_rows.is_black_box(spec):
            continue
        b = from_rows.broken_at(ctx.df, model, aid, eps, from_rows.is_minimal_norm(spec), index)
        if b is not None:
            parts.append(b)
    return pd.concat(parts, axis=1).any(axis=1) if parts else None


def _unbounded_from_rows(p: Planned, ctx: _Context) -> CheckResult:
    """Without a bounded white-box attack, the minimal-norm white-box attacks are the unbounded
    attack: samples for which none found any adversarial survive."""
    df, m = ctx.df, p.model
    ids = [a for a, s in ctx.first_spec.items() if s.threat.value == p.threat
           and not from_rows.is_black_box(s) and from_rows.is_minimal_norm(s)]
    if not ids:
        return CheckResult(p.name, m, p.threat, "skip", "no white-box attack for this threat",
                           {}, p.cells)
    cc = clean_correct(df, m)
    samples = cc.index[cc.values]
    sub = df[(df.model == m) & df.attack.isin(ids)]
    d = sub.groupby("sample_index").distance.min().reindex(samples)
    survivors = int(d.isna().sum())
    frac = survivors / max(len(samples), 1)
    return CheckResult(p.name, m, p.threat,
                       _fraction_status(frac, ctx.cs.threshold("unbounded_survival"), "fail"),
                       f"{survivors} of {len(samples)} samples without any adversarial from the "
                       f"minimal-norm attacks {', '.join(ids)} ({100 * frac:.0f}%)",
                       {"survivors": survivors, "samples": int(len(samples)), "fraction": frac,
                        "attacks": ids}, p.cells)


def _compute_or_error(p: Planned, ctx: _Context) -> CheckResult:
    try:
        return compute(p, ctx)
    except Exception as e:  # noqa: BLE001 - a check that cannot run is reported, not raised
        LOG.exception("check %s of %s failed", p.name, p.model)
        return CheckResult(p.name, p.model, p.threat, "error", f"{type(e).__name__}: {e}", {},
                           p.cells)


def _load_context(run_dir: Path, data_dir: str | Path | None, subsample: int | None) -> _Context:
    from robustgen_bench.report.runs import RunDirError, load_runs

    manifest = read_manifest(run_dir)
    if not manifest:
        raise RunDirError("no manifest.json: expected a run directory written by `rgbench run`",
                          file=run_dir)
    cs = ChecksSpec.from_canonical(manifest.get("checks"))
    if subsample is not None:
        cs = cs.with_subsample(subsample)
    return _Context(run_dir, manifest, load_runs([run_dir]).results, cs, data_dir)


# A worker process's context (rows, data, its last defense), reused across the checks it computes.
_WORKER_CONTEXT: dict[tuple[str, str, int | None], _Context] = {}


def _compute_in_worker(run_dir: str, data_dir: str | None, subsample: int | None,
                       p: Planned) -> CheckResult:
    key = (run_dir, str(data_dir), subsample)
    if key not in _WORKER_CONTEXT:
        _WORKER_CONTEXT.clear()
        _WORKER_CONTEXT[key] = _load_context(Path(run_dir), data_dir, subsample)
    return _compute_or_error(p, _WORKER_CONTEXT[key])


def _init_worker() -> None:
    torch.set_num_threads(1)  # the workers already occupy the cores


def run_checks(run_dir: str | Path, *, data_dir: str | Path | None = None,
               subsample: int | None = None, names: Sequence[str] | None = None,
               recompute: bool = False, log: Log | None = None,
               workers: int = 1) -> list[CheckResult]:
    """Compute the run's missing checks (all with ``recompute``), store them, return every
    planned result in report order. [] when the suite turned checks off.

    ``workers`` > 1 computes the checks in that many spawned processes (each check is
    independent; each worker keeps its own rows, data and last defense); only this process
    writes the store.
    """
    run_dir = Path(run_dir)
    ctx = _load_context(run_dir, data_dir, subsample)
    if names is not None:
        unknown = [n for n in names if n not in CHECK_NAMES]
        if unknown:
            from robustgen_bench.errors import UserInputError

            raise UserInputError(f"unknown check {unknown[0]!r}; expected names from "
                                 f"{', '.join(CHECK_NAMES)}", key="--only")
    planned = plan_checks(ctx.df, ctx.manifest, ctx.cs, names)
    stored = {} if recompute else read_checks(run_dir, keys=[p.key for p in planned])
    # model by model, so each defense is built once (per worker)
    order = sorted(range(len(planned)), key=lambda i: (planned[i].model, i))
    results: dict[int, CheckResult] = {i: stored[planned[i].key] for i in order
                                       if planned[i].key in stored}
    todo = [i for i in order if i not in results]

    def label(p: Planned) -> str:
        return f"{p.model} · {p.name}" + ("" if p.threat == ALL_THREATS else f" ({p.threat})")

    def keep(i: int, r: CheckResult) -> None:
        if r.status != "error":  # an error is retried by the next call
            write_check(run_dir, planned[i].key, r)
        results[i] = r

    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from robustgen_bench.executors import stop_pool

        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)
        try:
            futures = {pool.submit(_compute_in_worker, str(run_dir),
                                   None if data_dir is None else str(data_dir), subsample,
                                   planned[i]): i for i in todo}
            for f in as_completed(futures):
                i = futures[f]
                keep(i, f.result())
                if log:
                    log(f"checked {label(planned[i])}: {results[i].status}")
        except BaseException:
            stop_pool(pool)  # Ctrl-C or a failed check: stored checks stay, the rest is redone
            raise
        pool.shutdown(wait=True)
    else:
        for i in todo:
            if log:
                log(f"checking {label(planned[i])}")
            keep(i, _compute_or_error(planned[i], ctx))
    return [results[i] for i in range(len(planned))]
