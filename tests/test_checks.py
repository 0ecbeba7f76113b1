"""Attack-failure checks: each fires on the misbehaving defense or attack it exists for and stays
quiet on an honest model. Misbehaving defenses are zoo entries in a temporary folder."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustgen_bench.attacks import AttackOutput, register_attack
from robustgen_bench.attacks.base import Attack
from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.checks import from_rows
from robustgen_bench.checks.report import caption_sentence
from robustgen_bench.checks.result import CheckResult
from robustgen_bench.checks.run import run_checks
from robustgen_bench.checks.spec import ChecksSpec
from robustgen_bench.config import load_suite
from robustgen_bench.errors import ConfigError
from robustgen_bench.runner import run_suite
from robustgen_bench.store import read_cell_counters
from robustgen_bench.threat import Threat

MODEL_PY = '''
import torch
from torch import nn
from robustgen_bench.defenses.base import Defense


class Misbehaving(Defense):
    """The tiny CNN, optionally: input quantisation (exact hook: zero gradients), saturated
    probabilities as output, or noise in predict while declared deterministic."""

    def __init__(self, kind: str = "honest") -> None:
        super().__init__()
        self.kind = kind
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 5, 2, 2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )

    def predict_with_grad(self, x):
        if self.kind == "quantized":
            x = torch.round(x * 4) / 4
        if self.kind == "noisy":
            x = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
        out = self.net(x)
        if self.kind == "probabilities":
            out = torch.softmax(100 * out, dim=1)
        return out

    def predict(self, x):
        with torch.no_grad():
            return self.predict_with_grad(x)


def build(config, *, entry=None):
    return Misbehaving(**config)
'''


def write_entry(root: Path, model: torch.nn.Module, name: str, kind: str,
                randomized: bool = False) -> None:
    folder = root / "mnist" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(MODEL_PY)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "weights.safetensors"))
    sha = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    (folder / "entry.yaml").write_text(
        f"id: mnist/{name}\nname: {name}\nbuilder: model:build\ndataset: mnist\n"
        f"config: {{kind: {kind}}}\nweights: {{file: weights.safetensors, sha256: {sha}}}\n"
        f"adaptive: {{gradient: exact, randomized: {str(randomized).lower()}, "
        f"eot: {2 if randomized else 1}}}\n")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_cnn) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    for name, kind in [("honest", "honest"), ("quantized", "quantized"),
                       ("probabilities", "probabilities"), ("noisy-declared-det", "noisy")]:
        write_entry(root, tiny_cnn, name, kind)
    write_entry(root, tiny_cnn, "noisy", "noisy", randomized=True)
    return root


@pytest.fixture(autouse=True)
def _zoo_env(zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGBENCH_ZOO", str(zoo))


class Liar(Attack):
    """A library that reports success on every sample and returns the input unchanged."""

    THREATS = frozenset({Threat.LINF, Threat.L2})

    def _run(self, model, x, y):
        return AttackOutput(x_adv=x.clone(), flagged=torch.ones(len(x), dtype=torch.bool))


@pytest.fixture()
def liar():
    """``fake/Liar`` registered for one test only (the registry is global)."""
    from robustgen_bench import attacks

    register_attack("fake", "Liar")(Liar)
    yield Liar
    attacks._REGISTRY.pop(("fake", "Liar"), None)


def write_suite(path: Path, models: list[str], attacks: list[str], checks: str = "",
                n: int = 16) -> Path:
    text = textwrap.dedent(f"""\
        name: checks-test
        dataset: {{name: mnist, split: test, n: {n}, seed: 0}}
        models: [{', '.join(models)}]
        run: {{batch_size: {n}, verify_draws: 3}}
        attacks:
        """) + "".join(f"  - {a}\n" for a in attacks) + checks
    path.write_text(text)
    return path


PGD = ("{id: pgd, library: foolbox, attack: LinfPGD, threat: linf, epsilon: 0.3, steps: 20, "
       "rel_stepsize: 0.1, random_start: false}")


def by(results: list[CheckResult]) -> dict[tuple[str, str], CheckResult]:
    return {(r.model.split("/")[-1], r.name): r for r in results}


@pytest.fixture(scope="module")
def main_run(zoo: Path, tmp_path_factory) -> tuple[Path, list[CheckResult]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("RGBENCH_ZOO", str(zoo))
    tmp = tmp_path_factory.mktemp("main")
    models = ["mnist/honest", "mnist/quantized", "mnist/probabilities", "mnist/noisy-declared-det"]
    suite = load_suite(write_suite(tmp / "s.yaml", models, [PGD],
                                   "checks: {subsample: 16, transfer_from: mnist/honest}\n"))
    run_suite(suite, tmp / "run")
    results = run_checks(tmp / "run")
    yield tmp / "run", results
    mp.undo()


def test_honest_model_passes_every_check(main_run) -> None:
    r = by(main_run[1])
    honest = {name: res for (m, name), res in r.items() if m == "honest"}
    assert set(honest) == {"gradients", "range", "randomness", "unbounded", "monotone",
                           "blackbox", "transfer", "convergence", "silent"}
    assert all(res.status in ("pass", "skip") for res in honest.values()), honest
    assert honest["gradients"].status == "pass" and honest["unbounded"].status == "pass"
    assert honest["transfer"].status == "skip"  # it is the transfer source itself


def test_quantisation_with_exact_hook_fires_gradient_unbounded_and_transfer(main_run) -> None:
    r = by(main_run[1])
    g = r[("quantized", "gradients")]
    assert g.status == "warn" and g.detail["zero"] == g.detail["samples"] >= 10
    u = r[("quantized", "unbounded")]
    assert u.status == "fail" and u.detail["survivors"] == u.detail["samples"]
    assert u.detail["epsilon"] == 1.0
    t = r[("quantized", "transfer")]
    assert t.status == "warn" and t.detail["per_epsilon"][0]["only_transfer"] >= 8
    assert r[("quantized", "range")].status == "pass"
    assert r[("quantized", "randomness")].status == "pass"


def test_saturated_probabilities_fire_the_range_check(main_run) -> None:
    r = by(main_run[1])
    assert r[("probabilities", "range")].status == "warn"
    assert r[("probabilities", "range")].detail == {"predict": True, "surrogate": True}
    assert r[("honest", "range")].status == "pass"


def test_randomized_model_declared_deterministic_fires_randomness(main_run) -> None:
    r = by(main_run[1])
    res = r[("noisy-declared-det", "randomness")]
    assert res.status == "warn" and "declared deterministic" in res.figure
    assert r[("honest", "randomness")].detail["differs"] is False


def test_results_are_stored_and_reused(main_run, monkeypatch) -> None:
    run_dir, first = main_run
    import robustgen_bench.checks.run as run_mod

    def boom(*a, **k):
        raise AssertionError("a stored check was recomputed")

    monkeypatch.setattr(run_mod, "compute", boom)
    again = run_checks(run_dir)
    assert [(r.model, r.name, r.threat, r.status, r.figure) for r in again] == \
        [(r.model, r.name, r.threat, r.status, r.figure) for r in first]


def test_probes_rerun_the_attack_the_run_ran(tmp_path) -> None:
    # the warm surrogate, a per-attack EOT and sweep points key cells: the probes' specs must
    # carry them back from the manifest, or a convergence probe tests another attack
    from robustgen_bench.checks.probes import convergence_variants
    from robustgen_bench.checks.run import attack_specs
    pgd = ("{id: pgd, library: foolbox, attack: LinfPGD, threat: linf, epsilon: [0.1, 0.3], "
           "steps: [5, 10], rel_stepsize: 0.1, eot: 3, surrogate: {warm_steps: 4, radius: 0.5}}")
    s = load_suite(write_suite(tmp_path / "s.yaml", ["mnist/honest"], [pgd]))
    manifest = {"suite": s.canonical()}  # what the run's manifest holds
    specs = attack_specs(manifest)
    assert [a.canonical() for a in specs] == [a.canonical() for a in s.attacks]
    assert all(a.surrogate is not None and a.surrogate.steps == 4 and a.eot == 3 for a in specs)
    from robustgen_bench.adaptive import AdaptiveSpec, GradientHook

    randomized = AdaptiveSpec(GradientHook.EXACT, randomized=True, eot=5)
    [(_, steps2, _), (label, eot2, _)] = convergence_variants(specs[0], randomized)
    assert dict(steps2.params)["steps"] == 2 * dict(specs[0].params)["steps"]
    assert eot2.eot == 6 and "2x EOT (6)" in label  # the attack's EOT, doubled


def test_worker_processes_compute_the_same_checks(main_run, tmp_path) -> None:
    # a copy of the run: recomputing in place would race the other tests' stored results
    import shutil

    run_dir, first = main_run
    shutil.copytree(run_dir, tmp_path / "run")
    again = run_checks(tmp_path / "run", recompute=True, workers=2)

    def key(results: list[CheckResult]) -> list[tuple[str, ...]]:
        # the figure of a model that draws unseeded noise while declared deterministic depends
        # on the process's RNG state (that is what the check reports); its verdict does not
        return [(r.model, r.name, r.threat, r.status,
                 "" if (r.model, r.name) == ("mnist/noisy-declared-det", "randomness") else r.figure)
                for r in results]

    assert key(again) == key(first)
    assert key(run_checks(tmp_path / "run")) == key(first)  # stored by the driver


def test_table_board_and_caption_show_the_checks(main_run, tmp_path) -> None:
    from robustgen_bench.report import render_table, write_reports
    from robustgen_bench.report.leaderboard import write_leaderboard

    run_dir, _ = main_run
    md = render_table([run_dir], "md")
    assert "### Attack-failure checks" in md
    assert "Attack-failure checks raised a warning for the evaluation of" in md
    assert "quantized (gradients, unbounded, transfer)" in md
    assert "honest (" not in md
    tex = render_table([run_dir], "tex")
    assert tex.startswith("% ") and "quantized" in tex.splitlines()[0]
    paths = {p.name for p in write_reports(run_dir)}
    assert {"checks.md", "checks.csv"} <= paths
    board = write_leaderboard(run_dir, tmp_path / "boards", allow_incomplete=True)
    text = board[0].read_text()
    assert "## Attack-failure checks" in text and "| quantized | L∞ | unbounded | **fail** |" in text
    assert "Attack-failure checks" in board[1].read_text()


def test_cli_checks_exit_codes(main_run, tmp_path) -> None:
    from robustgen_bench.cli import app, main

    run_dir, _ = main_run
    (run_dir / "checks.md").unlink(missing_ok=True)
    res = CliRunner().invoke(app, ["checks", str(run_dir)], env={"COLUMNS": "200"})
    assert res.exit_code == 1, res.output
    assert "quantized" in res.output and "fail" in res.output
    assert "unbounded | **fail**" in (run_dir / "checks.md").read_text()  # reports rewritten
    assert main(["checks", str(tmp_path / "nope")]) == 2
    assert main(["checks", str(run_dir), "--only", "gradient"]) == 2


def test_far_too_few_steps_fire_convergence(tmp_path) -> None:
    weak = ("{id: pgd, library: foolbox, attack: LinfPGD, threat: linf, epsilon: 0.3, steps: 2, "
            "rel_stepsize: 0.2, random_start: false}")
    suite = load_suite(write_suite(tmp_path / "s.yaml", ["mnist/honest"], [weak],
                                   "checks: {subsample: 40}\n", n=40))
    run_suite(suite, tmp_path / "run")
    [conv] = run_checks(tmp_path / "run", names=["convergence"])
    assert conv.status == "warn", conv.figure
    v = conv.detail["variants"][0]
    assert v["variant"].startswith("2x steps") and v["accuracy"] < conv.detail["accuracy"]
    assert v["significant"]


def test_a_budget_search_alone_still_gets_the_convergence_probe(tmp_path) -> None:
    """A suite whose only white-box attack is a minimal-norm PGD search is probed at the cell's
    budget by its bounded form (one PGD at epsilon); far too few steps fire the check."""
    weak = ("{id: pgd, library: foolbox, attack: LinfPGDSearch, threat: linf, epsilon: 0.3, "
            "max_epsilon: 0.3, grid: 3, steps: 2, rel_stepsize: 0.2, random_start: false}")
    suite = load_suite(write_suite(tmp_path / "s.yaml", ["mnist/honest"], [weak],
                                   "checks: {subsample: 40}\n", n=40))
    run_suite(suite, tmp_path / "run")
    [conv] = run_checks(tmp_path / "run", names=["convergence"])
    assert conv.status == "warn", conv.figure
    assert conv.detail["bounded_form"] == {"max_epsilon": 0.3, "grid": 1}
    assert "as max_epsilon=0.3, grid=1" in conv.figure
    v = conv.detail["variants"][0]
    assert v["variant"] == "2x steps (4)" and v["accuracy"] < conv.detail["accuracy"]
    # the unbounded check still reads the search's rows instead of probing
    [unb] = run_checks(tmp_path / "run", names=["unbounded"])
    assert "minimal-norm attacks pgd" in unb.figure


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.001])
def test_min_probe_samples_is_where_mcnemar_can_first_reach_alpha(alpha: float) -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    from robustgen_bench.checks.from_rows import min_probe_samples

    n = min_probe_samples(alpha)
    def best_p(k: int) -> float:  # all k samples discordant one way: the smallest p possible
        return mcnemar([[0, k], [0, 0]], exact=True).pvalue
    assert best_p(n) < alpha <= best_p(n - 1)


def test_probes_on_too_few_samples_skip_instead_of_passing(tmp_path) -> None:
    suite = load_suite(write_suite(tmp_path / "s.yaml", ["mnist/honest", "mnist/quantized"], [PGD],
                                   "checks: {subsample: 4, transfer_from: mnist/honest}\n", n=8))
    run_suite(suite, tmp_path / "run")
    res = by(run_checks(tmp_path / "run", names=["convergence", "transfer"]))
    for name in ("convergence", "transfer"):
        r = res[("quantized", name)]
        assert r.status == "skip" and r.figure.startswith("underpowered: on 4 samples"), r.figure


def test_library_success_without_adversarial_fires_silent(tmp_path, liar) -> None:
    from robustgen_bench.cli import main

    liar = "{id: liar, library: fake, attack: Liar, threat: linf, epsilon: 0.3}"
    suite = load_suite(write_suite(tmp_path / "s.yaml", ["mnist/honest"], [liar],
                                   "checks: {subsample: 8, skip: [convergence]}\n"))
    run_suite(suite, tmp_path / "run")
    counters = read_cell_counters(tmp_path / "run")
    [c] = counters.values()
    res = by(run_checks(tmp_path / "run"))
    s = res[("honest", "silent")]
    assert s.status == "warn" and s.detail["flagged_rejected"] == s.detail["attacked"] > 0
    assert c["flagged_rejected"] == s.detail["attacked"]
    # the liar never moves: an "unbounded" liar breaks nothing
    assert res[("honest", "unbounded")].status == "fail"
    assert main(["checks", str(tmp_path / "run")]) == 1


def test_declared_randomized_model_gets_draw_and_eot_probes(tmp_path) -> None:
    suite = load_suite(write_suite(tmp_path / "s.yaml", ["mnist/noisy"], [PGD],
                                   "checks: {subsample: 8, skip: [transfer]}\n", n=8))
    run_suite(suite, tmp_path / "run")
    res = by(run_checks(tmp_path / "run"))
    rnd = res[("noisy", "randomness")]
    assert rnd.figure.startswith("randomized:") and rnd.detail["probe"]["draws"] == 3
    assert rnd.detail["stored"]["rows"] > 0
    labels = [v["variant"] for v in res[("noisy", "convergence")].detail["variants"]]
    assert labels == ["2x steps (40)", "2x EOT (4) and verify draws (6)"]


def test_honest_run_exits_zero_and_checks_can_be_turned_off(tmp_path, capsys) -> None:
    from robustgen_bench.cli import main

    suite = write_suite(tmp_path / "s.yaml", ["mnist/honest"], [PGD],
                        "checks: {subsample: 8, transfer_from: null}\n", n=8)
    assert main(["run", str(suite), "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "attack-failure checks" in out.lower() and "wrote" in out
    # monotone, blackbox and transfer (no source) do not apply here, and the caption says so
    results = run_checks(tmp_path / "run")
    skipped = {r.name for r in results if r.status == "skip"}
    assert {"monotone", "blackbox", "transfer"} <= skipped
    assert (f"No attack-failure check warned; {sum(r.status == 'skip' for r in results)} of "
            f"{len(results)} did not apply or had too few samples"
            in (tmp_path / "run" / "caption.txt").read_text())
    assert main(["checks", str(tmp_path / "run")]) == 0
    off = load_suite(write_suite(tmp_path / "off.yaml", ["mnist/honest"], [PGD],
                                 "checks: false\n", n=8))
    run_suite(off, tmp_path / "off")
    assert run_checks(tmp_path / "off") == []
    assert main(["checks", str(tmp_path / "off")]) == 0


# --------------------------------------------------------------------------- configuration


def test_checks_are_on_by_default(tmp_path) -> None:
    s = load_suite(write_suite(tmp_path / "s.yaml", ["mnist/honest"], [PGD]))
    assert s.checks == ChecksSpec() and s.checks.enabled and len(s.checks.active) == 9


@pytest.mark.parametrize("checks, key, expect", [
    ("checks: {skip: [gradient]}", "checks.skip[0]", "did you mean 'gradients'"),
    ("checks: {subsample: 0}", "checks.subsample", "expected an integer >= 1"),
    ("checks: {thresholds: {zero_gradients: 2}}", "checks.thresholds.zero_gradients", "[0, 1]"),
    ("checks: {thresholds: {zero_gradient: 0.1}}", "checks.thresholds.zero_gradient", "unknown key"),
    ("checks: {transfer_from: mnist/honset}", "checks.transfer_from", "unknown zoo model"),
    ("checks: {alpha: 1.5}", "checks.alpha", "(0, 1)"),
    ("checks: {enabled: maybe}", "checks.enabled", "true or false"),
    ("checks: {subsamples: 3}", "checks.subsamples", "unknown key"),
])
def test_invalid_checks_settings_are_config_errors(tmp_path, checks, key, expect) -> None:
    with pytest.raises(ConfigError) as e:
        load_suite(write_suite(tmp_path / "s.yaml", ["mnist/honest"], [PGD], checks + "\n"))
    assert e.value.key == key and expect.lower() in str(e.value).lower()
    assert e.value.line is not None


def test_checks_settings_do_not_change_the_suite_hash(tmp_path) -> None:
    a = load_suite(write_suite(tmp_path / "a.yaml", ["mnist/honest"], [PGD]))
    b = load_suite(write_suite(tmp_path / "b.yaml", ["mnist/honest"], [PGD],
                               "checks: {subsample: 4}\n"))
    assert a.hash() == b.hash() and b.checks.subsample == 4
    assert ChecksSpec.from_canonical(b.checks.canonical()) == b.checks


# --------------------------------------------------------------------------- from stored rows


def _rows(records: list[tuple]) -> pd.DataFrame:
    """(attack, threat, eps, sample, adv_correct, distance, minimal) -> a results frame."""
    out = []
    for attack, threat, eps, s, ok, dist, minimal in records:
        out.append({"model": "m", "attack": attack, "threat": threat, "epsilon": eps,
                    "sample_index": s, "label": 1, "clean_pred": 1, "adv_pred": 1 if ok else 2,
                    "adv_correct": ok, "distance": dist, "minimal_norm": minimal,
                    "violation": None, "cell_key": f"{attack}@{eps}"})
    return pd.DataFrame(out)


def _spec(aid: str, library: str, attack: str, threat: str = "l2") -> AttackSpec:
    return AttackSpec(aid, library, attack, Threat(threat), 1.0, MappingProxyType({}))


SPECS = {"pgd": _spec("pgd", "foolbox", "L2PGD"), "ddn": _spec("ddn", "foolbox", "DDNAttack"),
         "noise": _spec("noise", "foolbox", "GaussianNoise")}


def test_monotone_flags_robust_at_larger_but_broken_at_smaller_budget() -> None:
    clean = [("clean", "none", 0.0, s, True, np.nan, False) for s in range(4)]
    ok = clean + [("pgd", "l2", 1.0, s, s != 0, 0.8 if s == 0 else np.nan, False) for s in range(4)] \
        + [("pgd", "l2", 2.0, s, s not in (0, 1), np.nan, False) for s in range(4)]
    r = from_rows.monotone(_rows(ok), SPECS, "m", "l2", ChecksSpec())
    assert r.status == "pass" and r.detail["violations"] == 0
    bad = clean + [("pgd", "l2", 1.0, s, s != 0, np.nan, False) for s in range(4)] \
        + [("pgd", "l2", 2.0, s, True, np.nan, False) for s in range(4)]
    r = from_rows.monotone(_rows(bad), SPECS, "m", "l2", ChecksSpec())
    assert r.status == "warn" and r.detail["violations"] == 1 and "sample 0" in r.detail["examples"][0]
    # a minimal-norm distance counts at every budget at or above it
    mixed = clean + [("ddn", "l2", 1.0, s, s != 3, 0.5 if s == 3 else np.nan, True) for s in range(4)] \
        + [("pgd", "l2", 2.0, s, True, np.nan, False) for s in range(4)]
    assert from_rows.monotone(_rows(mixed), SPECS, "m", "l2", ChecksSpec()).status == "pass"


def test_blackbox_stronger_than_whitebox_per_sample() -> None:
    n = 12
    clean = [("clean", "none", 0.0, s, True, np.nan, False) for s in range(n)]
    weak_wb = [("pgd", "l2", 1.0, s, True, np.nan, False) for s in range(n)]
    strong_bb = [("noise", "l2", 1.0, s, False, 0.9, True) for s in range(n)]
    r = from_rows.blackbox(_rows(clean + weak_wb + strong_bb), SPECS, "m", "l2", ChecksSpec())
    assert r.status == "warn"
    row = r.detail["per_epsilon"][0]
    assert row["only_blackbox"] == n and row["only_whitebox"] == 0 and row["p"] < 0.01
    strong_wb = [("pgd", "l2", 1.0, s, False, 0.5, False) for s in range(n)]
    weak_bb = [("noise", "l2", 1.0, s, s % 2 == 0, np.nan if s % 2 == 0 else 0.9, True)
               for s in range(n)]
    r = from_rows.blackbox(_rows(clean + strong_wb + weak_bb), SPECS, "m", "l2", ChecksSpec())
    assert r.status == "pass" and r.detail["per_epsilon"][0]["only_blackbox"] == 0
    only_wb = _rows(clean + strong_wb)
    assert from_rows.blackbox(only_wb, SPECS, "m", "l2", ChecksSpec()).status == "skip"
    # on 7 clean-correct samples even 7 of 7 broken only by black-box gives p = 0.016: no pass
    few = 7
    r = from_rows.blackbox(_rows(clean[:few] + weak_wb[:few] + strong_bb[:few]), SPECS, "m", "l2",
                           ChecksSpec())
    assert r.status == "skip" and r.figure.startswith("underpowered: on 7 samples"), r.figure
    assert "dataset.n" in r.figure and r.detail["per_epsilon"][0]["only_blackbox"] == few


def test_caption_sentence() -> None:
    ok = CheckResult("gradients", "a", "all", "pass", "")
    bad = CheckResult("unbounded", "b", "linf", "fail", "")
    assert caption_sentence([]) == ""
    assert caption_sentence([ok]) == "Every attack-failure check passed."
    skip = CheckResult("monotone", "a", "linf", "skip", "one budget only")
    assert caption_sentence([ok, skip]) == (
        "No attack-failure check warned; 1 of 2 did not apply or had too few samples (see the "
        "checks table).")
    assert caption_sentence([ok, bad], display=str.upper) == (
        "Attack-failure checks raised a warning for the evaluation of B (unbounded); their "
        "robust accuracy may be overestimated.")


def test_counters_are_stored_once_per_batch_and_checks_keyed_to_cells(tmp_path) -> None:
    from robustgen_bench.checks.storage import current_checks, read_checks, write_check
    from robustgen_bench.store import CellInfo, ResultRow, ResultStore

    cell = CellInfo("k1", "m", "a", "linf", 0.3, False, {}, "h")
    rows = [ResultRow(i, 1, 1, 1, True, None, (1,)) for i in range(3)]
    with ResultStore(tmp_path) as store:
        store.ensure_cell(cell)
        store.add_results(cell, rows, counters={"flagged_rejected": 2, "unperturbed": 1})
        store.add_results(cell, rows, counters={"flagged_rejected": 2, "unperturbed": 1})  # resumed
    assert read_cell_counters(tmp_path) == {"k1": {"flagged_rejected": 2, "unperturbed": 1,
                                                   "batches": 1}}
    write_check(tmp_path, "x", CheckResult("silent", "m", "linf", "warn", "f", {"n": 1}, ("k1",)))
    write_check(tmp_path, "y", CheckResult("silent", "m", "linf", "pass", "g", {}, ("k2",)))
    assert set(read_checks(tmp_path)) == {"x", "y"}
    [cur] = current_checks(tmp_path, {"cells": [{"key": "k1"}]})
    assert cur.status == "warn" and cur.detail == {"n": 1}


def test_silent_counts_unperturbed_results_of_whitebox_minimal_norm_attacks_only() -> None:
    n = 10
    clean = [("clean", "none", 0.0, s, True, np.nan, False) for s in range(n)]
    cells = clean + [("ddn", "l2", 1.0, s, True, np.nan, True) for s in range(n)] \
        + [("noise", "l2", 1.0, s, True, np.nan, True) for s in range(n)]
    df = _rows(cells)
    quiet = {"ddn@1.0": {"flagged_rejected": 0, "unperturbed": 0},
             "noise@1.0": {"flagged_rejected": 0, "unperturbed": 10}}
    r = from_rows.silent(df, SPECS, "m", "l2", quiet, ChecksSpec())
    assert r.status == "pass" and r.detail["unperturbed"] == 10 and "noise 10" in r.figure
    loud = {**quiet, "ddn@1.0": {"flagged_rejected": 0, "unperturbed": 5}}
    r = from_rows.silent(df, SPECS, "m", "l2", loud, ChecksSpec())
    assert r.status == "warn" and "ddn 5" in r.figure
    df.loc[df.attack == "ddn", "violation"] = ["norm 2 > eps 1"] + [None] * (n - 1)
    r = from_rows.silent(df, SPECS, "m", "l2", {}, ChecksSpec())
    assert r.status == "warn" and r.detail["violations"] == 1 and "predates" in r.figure
