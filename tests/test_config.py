"""Suite files: valid parsing, includes, overrides, and malformed suites (exit 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robustgen_bench.config import load_suite
from robustgen_bench.errors import ConfigError
from robustgen_bench.threat import Threat

GOOD = """\
name: tiny
dataset: {name: mnist, split: test, n: 12, seed: 3}
models: [mnist/tiny-cnn]
attacks:
  - id: pgd-linf
    library: foolbox
    attack: LinfPGD
    threat: linf
    epsilon: [0.1, 8/255]
    steps: 5
  - {id: ddn, library: foolbox, attack: DDNAttack, threat: l2, epsilon: 1.5, params: {steps: 5}}
stats: {alpha: 0.05, correction: holm}
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_suite_parses_to_typed_objects(tmp_zoo, tmp_path):
    s = load_suite(write(tmp_path, GOOD))
    assert s.name == "tiny" and s.dataset.n == 12 and s.dataset.seed == 3
    assert [(a.id, a.epsilon) for a in s.attacks] == [
        ("pgd-linf", 0.1), ("pgd-linf", pytest.approx(8 / 255)), ("ddn", 1.5)]
    assert s.attacks[0].threat is Threat.LINF and s.attacks[0].params["steps"] == 5
    assert s.attacks[2].params["steps"] == 5
    assert s.stats.alpha == 0.05 and s.stats.correction == "holm"
    # frozen
    with pytest.raises(AttributeError):
        s.name = "x"  # type: ignore[misc]


def test_include_overrides_and_limit(tmp_zoo, tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    child = write(tmp_path, "include: base.yaml\nname: child\ndataset: {n: 40}\n", "child.yaml")
    s = load_suite(child, overrides=["attacks.pgd-linf.steps=2", "stats.alpha=0.01"], limit=7)
    assert s.name == "child"
    assert s.dataset.n == 7 and s.dataset.seed == 3  # merged mapping, limit applied
    assert s.attacks[0].params["steps"] == 2 and s.stats.alpha == 0.01
    assert s.hash() != load_suite(child).hash()


MALFORMED = [
    # (id, yaml text, expected substrings in the message)
    ("empty", "", ["empty"]),
    ("not-mapping", "- a\n- b\n", ["expected a mapping"]),
    ("bad-yaml", "name: [unclosed\n", ["invalid YAML", ":2"]),
    ("unknown-top-key", GOOD + "atacks: []\n", ["atacks", "unknown key", "Did you mean 'attacks'", ":13"]),
    ("missing-name", GOOD.replace("name: tiny\n", ""), ["missing required key 'name'"]),
    ("name-not-string", GOOD.replace("name: tiny", "name: [1]"), ["'name'", "expected a non-empty string"]),
    ("unknown-dataset", GOOD.replace("name: mnist", "name: mnsit"), ["dataset.name", "unknown dataset 'mnsit'"]),
    ("n-not-int", GOOD.replace("n: 12", "n: twelve"), ["dataset.n", "expected an integer >= 1", ":2"]),
    ("bad-split", GOOD.replace("split: test", "split: val"), ["dataset.split", "'train' or 'test'"]),
    ("unknown-model", GOOD.replace("mnist/tiny-cnn]", "mnist/tiny-cn]"),
     ["models[0]", "unknown zoo model", "Did you mean 'mnist/tiny-cnn'"]),
    ("models-empty", GOOD.replace("[mnist/tiny-cnn]", "[]"), ["models", "non-empty list"]),
    ("unknown-attack", GOOD.replace("LinfPGD", "LinfPDG"), ["attacks[0].attack", "LinfPGD"]),
    ("unknown-library", GOOD.replace("library: foolbox\n", "library: foolbax\n"), ["attacks[0]", "foolbax"]),
    ("bad-threat", GOOD.replace("threat: linf", "threat: l3"), ["attacks[0].threat", "'linf' or 'l2'", ":8"]),
    ("threat-unsupported", GOOD.replace("threat: l2", "threat: linf"), ["attacks[1].threat", "DDNAttack supports 'l2'"]),
    ("bad-epsilon", GOOD.replace("epsilon: 1.5", "epsilon: big"), ["attacks[1].epsilon", "fraction like 8/255"]),
    ("bad-fraction", GOOD.replace("8/255", "8/0"), ["attacks[0].epsilon[1]", "fraction"]),
    ("missing-epsilon", GOOD.replace("    epsilon: [0.1, 8/255]\n", ""), ["attacks[0]", "missing required key 'epsilon'"]),
    ("duplicate-id", GOOD.replace("id: ddn", "id: pgd-linf"), ["attacks[1].id", "used twice"]),
    ("unknown-param", GOOD.replace("steps: 5\n", "stepz: 5\n", 1), ["attacks[0].stepz"]),
    ("param-wrong-type", GOOD.replace("steps: 5\n", "steps: many\n", 1), ["attacks[0].steps"]),
    ("attack-not-mapping", GOOD.replace("  - {id: ddn", "  - ddn\n  - {id: ddn"), ["attacks[1]", "expected a mapping"]),
    ("bad-alpha", GOOD.replace("alpha: 0.05", "alpha: 2"), ["stats.alpha", "(0, 1)"]),
    ("bad-correction", GOOD.replace("holm", "bonferroni"), ["stats.correction", "'holm' or 'none'"]),
    ("bad-report-format", GOOD + "report: {formats: [md, pdf]}\n", ["report.formats"]),
    ("unknown-stats-key", GOOD.replace("alpha: 0.05", "alfa: 0.05"), ["stats.alfa", "Did you mean 'alpha'"]),
]


@pytest.mark.parametrize("text,expected", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_suite_names_file_key_and_expectation(tmp_zoo, tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    msg = str(info.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_missing_file_and_include_cycle(tmp_zoo, tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_suite(tmp_path / "nope.yaml")
    write(tmp_path, "include: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "include: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="include cycle"):
        load_suite(tmp_path / "a.yaml")
    bad = write(tmp_path, "include: missing.yaml\n" + GOOD, "c.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        load_suite(bad)


def test_bad_override_is_a_config_error(tmp_zoo, tmp_path):
    p = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="--set.*no attack with id 'pgd-l2'"):
        load_suite(p, overrides=["attacks.pgd-l2.steps=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_suite(p, overrides=["dataset.n"])
    with pytest.raises(ConfigError, match="dataset.n"):
        load_suite(p, overrides=["dataset.n=-4"])


def test_cli_exit_code_2_without_traceback(tmp_zoo, tmp_path):
    p = write(tmp_path, GOOD.replace("threat: linf", "threat: l3"))
    proc = subprocess.run([sys.executable, "-m", "robustgen_bench.cli", "run", str(p)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "attacks[0].threat" in proc.stderr and str(p) in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "robustgen_bench.cli", "run", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


SWEEP = GOOD.replace("    steps: 5\n", "    steps: [2, 5, 10]\n    eot: [1, 3]\n", 1)


def test_list_valued_parameters_sweep_one_cell_per_value(tmp_zoo, tmp_path):
    s = load_suite(write(tmp_path, SWEEP))
    pgd = [a for a in s.attacks if a.sweep_of == "pgd-linf"]
    # steps × eot × the two epsilons; ids name the swept values in the suite's order
    assert len(pgd) == 12
    assert [a.id for a in pgd[:4]] == ["pgd-linf@steps=2,eot=1"] * 2 + ["pgd-linf@steps=2,eot=3"] * 2
    assert {(a.params["steps"], a.eot) for a in pgd} == {(st, e) for st in (2, 5, 10) for e in (1, 3)}
    assert all(dict(a.sweep) == {"steps": a.params["steps"], "eot": a.eot} for a in pgd)
    assert pgd[0].canonical()["sweep"] == {"of": "pgd-linf", "values": [["steps", 2], ["eot", 1]]}
    assert len({a.canonical()["id"] + str(a.epsilon) for a in pgd}) == 12  # distinct cells
    ddn = [a for a in s.attacks if a.id == "ddn"]
    assert len(ddn) == 1 and ddn[0].sweep_of is None and ddn[0].eot is None
    # --set takes a list too (YAML syntax), and verify_draws sweeps like any other key
    s2 = load_suite(write(tmp_path, GOOD), overrides=["attacks.ddn.verify_draws=[1, 3]"])
    assert [(a.id, a.verify_draws) for a in s2.attacks if a.sweep_of == "ddn"] == [
        ("ddn@verify_draws=1", 1), ("ddn@verify_draws=3", 3)]


SWEEP_MALFORMED = [
    ("empty", "steps: []", ["attacks[0].steps", "at least one value"]),
    ("repeated", "steps: [5, 5]", ["attacks[0].steps", "listed twice"]),
    ("bad-item", "steps: [5, many]", ["attacks[0].steps[1]", "must be an integer"]),
    ("below-minimum", "steps: [0, 5]", ["attacks[0].steps[0]", ">= 1"]),
    ("bad-eot", "steps: 5\n    eot: [2, 0]", ["attacks[0].eot[1]", "integer >= 1"]),
    ("bad-verify-draws", "steps: 5\n    verify_draws: [x]", ["attacks[0].verify_draws[0]"]),
]


@pytest.mark.parametrize("line,expected", [m[1:] for m in SWEEP_MALFORMED],
                         ids=[m[0] for m in SWEEP_MALFORMED])
def test_malformed_sweeps_name_the_key_and_item(tmp_zoo, tmp_path, line, expected):
    path = write(tmp_path, GOOD.replace("steps: 5", line, 1))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    msg = str(info.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, (part, msg)
