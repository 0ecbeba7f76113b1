"""The command line's contract as CI, job schedulers and scripts see it.

Every test runs the installed console script (``.venv/bin/rgbench``) in a subprocess without a
terminal (stdin closed, output piped), with ``COLUMNS`` unset or set to 40: exit codes (0 done,
1 runtime failure, 2 bad input), whole error lines, whole identifiers, ``--format json|csv``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli, write_tiny_entry

from robustgen_bench.config import load_suite
from robustgen_bench.errors import ConfigError, ZooError
from robustgen_bench.runner import run_suite
from robustgen_bench.zoo import LISTING_COLUMNS, build_defense, get_entry, parse_entry, sha256_file

SUITE = """\
name: contract
dataset: {{name: mnist, split: test, n: 4, seed: 0}}
models: [{model}]
run: {{batch_size: 4, verify_draws: 1}}
attacks:
  - {{id: {attack}, library: foolbox, attack: LinfPGD, threat: linf, epsilon: 0.1, steps: 2}}
"""
LONG_ATTACK = "pgd-linf-an-attack-id-longer-than-forty-columns"


def suite(tmp_path: Path, model: str = "mnist/tiny-cnn", attack: str = "pgd", extra: str = "") -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(SUITE.format(model=model, attack=attack) + extra)
    return p


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- 1, 2, 4: exit codes of every command; usage errors; messages never hard-wrapped -------------


@pytest.mark.parametrize("columns", [None, "40"])
def test_usage_errors_exit_2_with_the_usage_line_and_a_suggestion(tmp_path: Path,
                                                                   columns: str | None) -> None:
    p = suite(tmp_path)
    r = run_cli("run", p, "--out", tmp_path / "x", columns=columns, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Usage: rgbench run [OPTIONS]" in r.stderr
    assert "No such option: --out. Did you mean --run-dir?" in r.stderr
    assert "runtime failure" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()
    r = run_cli("zoo", "check", "--nn", "3", columns=columns)
    assert r.returncode == 2 and "Usage: rgbench zoo check" in r.stderr, r.stderr
    assert "Did you mean --n?" in r.stderr
    r = run_cli("status", tmp_path, "--format", columns=columns)  # an option without its value
    assert r.returncode == 2 and "Usage: rgbench status" in r.stderr, r.stderr


def test_bad_input_exits_2_for_every_command_and_errors_are_one_line(tmp_path: Path) -> None:
    # A long path: at 80 (no terminal, COLUMNS unset) or 40 columns rich used to split the line.
    deep = tmp_path / ("a-folder-with-a-long-name-" * 3) / "and-another-one-below-it"
    deep.mkdir(parents=True)
    missing = deep / "missing"
    cases = [
        (["run", f"{missing}.yaml"], f"error: {missing}.yaml: file not found"),
        (["status", missing], f"error: {missing}: run directory not found"),
        (["export", missing], f"error: {missing}: no results store"),
        (["table", missing], f"error: {missing}: run directory not found"),
        (["zoo", "list", "--format", "xml"], "unknown format 'xml'; expected one of table, json, csv"),
        (["zoo", "check", "--n", "0"], "error: key '--n': expected a positive number, got 0"),
        (["train", "mnist/no-such-entry"], "error: unknown zoo entry 'mnist/no-such-entry'."),
        (["train", "mnist/cnn", "--warm-start", missing], "key 'train.warm_start': --warm-start needs"),
        (["train", "mnist/eabs", "--warm-start", missing], f"--warm-start file {missing} does not exist"),
    ]
    # every command with COLUMNS unset; the long-path message also at 40 columns
    for (args, expected), columns in [(c, None) for c in cases] + [(cases[0], "40")]:
        r = run_cli(*args, columns=columns)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert expected in _error_line(r.stderr), (args, r.stderr)
        assert "Traceback" not in r.stderr and "runtime failure" not in r.stderr


# --- 3: identifiers are never truncated; --format json|csv for scripts ----------------------------

LONG_ID = "mnist/tiny-cnn-with-an-identifier-longer-than-forty-columns"


def test_zoo_list_keeps_ids_whole_and_has_json_and_csv(tmp_path: Path, tiny_cnn) -> None:
    root = tmp_path / "zoo"
    write_tiny_entry(root, tiny_cnn, LONG_ID)
    write_tiny_entry(root, tiny_cnn, "fashion-mnist/tiny-cnn")
    (root / "fashion-mnist/tiny-cnn/entry.yaml").write_text(
        (root / "fashion-mnist/tiny-cnn/entry.yaml").read_text().replace("dataset: mnist",
                                                                          "dataset: fashion-mnist"))
    r = run_cli("zoo", "list", "--root", root, columns="40")  # piped: `fashion-m…` before
    assert r.returncode == 0, r.stderr
    assert LONG_ID in r.stdout and "fashion-mnist/tiny-cnn" in r.stdout and "…" not in r.stdout
    r = run_cli("zoo", "list", "--root", root, "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {row["id"]: row["dataset"] for row in rows} == {
        LONG_ID: "mnist", "fashion-mnist/tiny-cnn": "fashion-mnist"}
    assert all(row["error"] is None and row["randomized"] is False for row in rows)
    r = run_cli("zoo", "list", "--root", root, "--format", "csv", columns="40")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert tuple(rows[0]) == LISTING_COLUMNS
    assert [row["id"] for row in rows] == ["fashion-mnist/tiny-cnn", LONG_ID]


def test_status_keeps_ids_whole_and_has_json_and_csv(tmp_zoo: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_suite(load_suite(suite(tmp_path, attack=LONG_ATTACK)), run)
    r = run_cli("status", run, columns="40")
    assert r.returncode == 0, r.stderr
    assert LONG_ATTACK in r.stdout and "mnist/tiny-cnn" in r.stdout and "…" not in r.stdout
    assert "complete: all 4 samples in every cell" in r.stdout
    r = run_cli("status", run, "--format", "json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["n"] == 4 and st["complete"] and st["finished_prefix"] == 4
    assert [(c["model"], c["attack"], c["stored"]) for c in st["cells"]] == [
        ("mnist/tiny-cnn", "clean", 4), ("mnist/tiny-cnn", LONG_ATTACK, 4)]
    assert all(re.fullmatch(r"[0-9a-f]{64}", c["cell_key"]) for c in st["cells"])
    r = run_cli("status", run, "--format", "csv", columns="40")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(row["attack"], row["stored"], row["cell_key"]) for row in rows] == [
        (c["attack"], str(c["stored"]), c["cell_key"]) for c in st["cells"]]


# --- 5: a model of another dataset, an unknown dataset ------------------------------------------


def test_a_model_of_another_dataset_is_a_config_error(tmp_zoo: Path, tmp_path: Path,
                                                       tiny_cnn) -> None:
    write_tiny_entry(tmp_zoo, tiny_cnn, "fashion-mnist/tiny-cnn")
    entry = tmp_zoo / "fashion-mnist/tiny-cnn/entry.yaml"
    entry.write_text(entry.read_text().replace("dataset: mnist", "dataset: fashion-mnist"))
    p = tmp_path / "suite.yaml"
    p.write_text(SUITE.format(model="mnist/tiny-cnn", attack="pgd").replace(
        "models: [mnist/tiny-cnn]", "models:\n  - mnist/tiny-cnn\n  - fashion-mnist/tiny-cnn"))
    with pytest.raises(ConfigError) as e:
        load_suite(p)
    assert e.value.line == 5 and e.value.key == "models[1]" and e.value.file == str(p)
    assert "'fashion-mnist/tiny-cnn' is a fashion-mnist model" in e.value.detail
    assert "the suite's dataset is mnist" in e.value.detail
    r = run_cli("run", p, "--run-dir", tmp_path / "r")
    assert r.returncode == 2, r.stderr
    assert f"{p}:5: key 'models[1]'" in _error_line(r.stderr)
    assert not (tmp_path / "r").exists()


def test_an_entry_with_an_unknown_dataset_is_refused_by_the_schema(tmp_zoo: Path,
                                                                   tmp_path: Path) -> None:
    entry = tmp_zoo / "mnist/tiny-cnn/entry.yaml"
    entry.write_text(entry.read_text().replace("dataset: mnist", "dataset: mnistt"))
    with pytest.raises(ZooError, match="key 'dataset': unknown dataset 'mnistt'. Did you mean 'mnist'"):
        get_entry("mnist/tiny-cnn")
    with pytest.raises(ZooError, match="unknown dataset 'mnistt'"):
        load_suite(suite(tmp_path))  # at suite validation, not later in the run


# --- 6: attack libraries are checked before any work ---------------------------------------------


def test_a_missing_attack_library_exits_2_with_the_install_command(tmp_zoo: Path,
                                                                   tmp_path: Path) -> None:
    # Hide torchattacks as a plain `pip install -e .` would leave it (a None entry in sys.modules
    # makes importlib find nothing and `import torchattacks` fail).
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['torchattacks'] = None\n")
    p = suite(tmp_path, extra="  - {id: square, library: torchattacks, attack: Square, "
                              "threat: linf, epsilon: 0.1}\n")
    r = run_cli("run", p, "--run-dir", tmp_path / "r", env={"PYTHONPATH": str(hide)})
    assert r.returncode == 2, r.stderr
    line = _error_line(r.stderr)
    assert f"{p}:7: key 'attacks[1].library'" in line
    assert "attack library 'torchattacks' is not installed" in line
    assert "pip install --no-deps 'torchattacks==3.5.1'" in line
    assert not (tmp_path / "r").exists()  # before any work


def test_torchattacks_is_declared_with_the_pin_setup_installs() -> None:
    from robustgen_bench.attacks.backends import BACKENDS, install_command

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["torchattacks"]
    assert extra == ["torchattacks==3.5.1"]
    assert "pip install -q --no-deps torchattacks==3.5.1" in (REPO / "scripts/setup.sh").read_text()
    assert install_command(BACKENDS["torchattacks"]) == "pip install --no-deps 'torchattacks==3.5.1'"
    declared = " ".join(pyproject["project"]["dependencies"])
    for b in BACKENDS.values():  # every attack library: a dependency or an extra
        assert b.distribution in declared or b.extra in pyproject["project"]["optional-dependencies"]


# --- 7: broken zoo entries are bad input; a failed run leaves no run directory -------------------


def test_broken_entries_exit_2_naming_the_file_and_leave_no_run_dir(tmp_zoo: Path, tmp_path: Path,
                                                                    tiny_cnn) -> None:
    # a torch.save pickle in a family entry (the cnn family reads safetensors)
    folder = tmp_zoo / "mnist/pt-cnn"
    folder.mkdir()
    cnn = build_defense(get_entry("mnist/cnn", REPO / "model_zoo"), load_weights=False)
    torch.save(cnn.state_dict(), folder / "weights.pt")
    (folder / "entry.yaml").write_text(textwrap.dedent(f"""\
        id: mnist/pt-cnn
        name: CNN from a pickle
        family: cnn
        dataset: mnist
        weights: {{file: weights.pt, sha256: "{sha256_file(folder / 'weights.pt')}"}}
        adaptive: {{gradient: exact, randomized: false}}
        """))
    r = run_cli("run", suite(tmp_path, model="mnist/pt-cnn"), "--run-dir", tmp_path / "r1")
    assert r.returncode == 2, r.stderr
    assert f"weights file {folder / 'weights.pt'} is not a safetensors file" in _error_line(r.stderr)
    assert not (tmp_path / "r1").exists()
    # a model.py with a syntax error
    src = tmp_zoo / "mnist/tiny-cnn/model.py"
    src.write_text(src.read_text() + "\ndef broken(:\n    pass\n")
    r = run_cli("run", suite(tmp_path), "--run-dir", tmp_path / "r2")
    assert r.returncode == 2, r.stderr
    n_lines = len(src.read_text().splitlines())
    assert f"error: {src}:{n_lines - 1}: syntax error" in _error_line(r.stderr)
    assert "runtime failure" not in r.stderr and not (tmp_path / "r2").exists()


def test_weights_that_are_not_safetensors_name_the_file(tmp_zoo: Path) -> None:
    w = tmp_zoo / "mnist/tiny-cnn/weights.safetensors"
    w.write_bytes(b"definitely not a safetensors file")
    entry = tmp_zoo / "mnist/tiny-cnn/entry.yaml"
    entry.write_text(re.sub(r"sha256: [0-9a-f]{64}", f"sha256: {sha256_file(w)}", entry.read_text()))
    with pytest.raises(ZooError, match=f"key 'weights': weights file {re.escape(str(w))} is not a "
                                       "safetensors file"):
        build_defense(get_entry("mnist/tiny-cnn"))


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../w.safetensors"])
def test_a_weights_file_outside_the_entry_folder_is_refused(tmp_zoo: Path, name: str) -> None:
    entry = tmp_zoo / "mnist/tiny-cnn/entry.yaml"
    entry.write_text(entry.read_text().replace("file: weights.safetensors", f"file: '{name}'"))
    with pytest.raises(ZooError, match=r"key .weights\[0\].file.: expected a file in the entry folder"):
        parse_entry(entry, tmp_zoo)


def test_a_weights_file_of_another_entry_of_the_zoo_is_allowed(tmp_zoo: Path) -> None:
    # shipped GAN-ABS variants share the weights of the entry they were derived from
    entry = tmp_zoo / "mnist/tiny-cnn/entry.yaml"
    entry.write_text(entry.read_text().replace("file: weights.safetensors",
                                               "file: ../tiny-noisy/weights.safetensors"))
    e = parse_entry(entry, tmp_zoo)
    assert e.weight_path(e.weights[0]).resolve() == (tmp_zoo / "mnist/tiny-noisy/weights.safetensors").resolve()


# --- 8: the license ------------------------------------------------------------------------------


def test_the_declared_license_is_shipped() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_a_bad_sweep_exits_2_naming_the_list_item_and_a_good_one_names_its_cells(
        tmp_zoo: Path, tmp_path: Path) -> None:
    bad = suite(tmp_path).read_text().replace("steps: 2}", "steps: [2, two]}")
    (tmp_path / "bad.yaml").write_text(bad)
    r = run_cli("run", tmp_path / "bad.yaml", "--run-dir", tmp_path / "r")
    assert r.returncode == 2, r.stderr
    line = _error_line(r.stderr)
    assert "attacks[0].steps[1]" in line and "must be an integer" in line, line
    assert "Traceback" not in r.stderr and not (tmp_path / "r").exists()
    # --set takes the list; the run stores one cell per value, ids naming the values
    r = run_cli("run", suite(tmp_path), "--run-dir", tmp_path / "ok", "--set", "attacks.pgd.steps=[1, 2]")
    assert r.returncode == 0, r.stderr
    cells = {c["attack"] for c in json.loads((tmp_path / "ok" / "manifest.json").read_text())["cells"]}
    assert {"pgd@steps=1", "pgd@steps=2"} <= cells, cells


def test_a_limit_of_whole_batches_reproduces_the_full_runs_rows(tmp_zoo: Path, tmp_path: Path) -> None:
    # the reproduction check: a fresh `--limit` run against the committed run's rows
    text = suite(tmp_path).read_text().replace("n: 4", "n: 8")
    (tmp_path / "s.yaml").write_text(text)
    full = run_cli("run", tmp_path / "s.yaml", "--run-dir", tmp_path / "full", "--set", "checks=false")
    assert full.returncode == 0, full.stderr
    whole = run_cli("run", tmp_path / "s.yaml", "--run-dir", tmp_path / "l4", "--limit", "4",
                    "--set", "checks=false")
    assert whole.returncode == 0, whole.stderr
    assert "note: --limit" not in whole.stdout
    same = run_cli("compare", tmp_path / "full", tmp_path / "l4")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "identical: all 8 paired rows agree" in same.stdout
    assert "not compared: 8 rows only in" in same.stdout
    part = run_cli("run", tmp_path / "s.yaml", "--run-dir", tmp_path / "l3", "--limit", "3",
                   "--set", "checks=false")
    assert part.returncode == 0, part.stderr
    assert ("note: --limit 3 ends inside a batch of 4; that batch draws other randomness than the "
            "full run's") in part.stdout
    assert "(--limit 4 reproduces them exactly; `rgbench compare`)" in part.stdout
