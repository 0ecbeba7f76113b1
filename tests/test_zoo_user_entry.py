"""Adding a defense is a folder (entry.yaml + model.py + weights); broken folders fail clearly."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustgen_bench.errors import ZooError
from robustgen_bench.zoo import build_defense, get_entry, sha256_file
from robustgen_bench.zoo_check import accuracy_tolerance, check_entries

MODEL_PY = textwrap.dedent('''
    """A user's own defense: the tiny CNN of the test fixtures, wrapped as a Defense."""
    import torch
    from torch import nn
    from robustgen_bench.defenses.base import Defense

    class UserCNN(Defense):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, width, 5, 2, 2), nn.ReLU(), nn.Conv2d(width, 32, 5, 2, 2), nn.ReLU(),
                nn.Flatten(), nn.Linear(32 * 7 * 7, 10))

        def predict_with_grad(self, x):
            return self.net(x)

        def predict(self, x):
            with torch.no_grad():
                return self.net(x)

    def build(config, *, entry):
        return UserCNN(**config)
''')


def _entry_yaml(sha: str, acc: float, *, randomized: bool = False, eot: int = 1,
                source: str = "builder: model:build") -> str:
    return textwrap.dedent(f'''\
        id: mnist/user-cnn
        name: User CNN   # a comment that must survive
        {source}
        dataset: mnist
        config: {{width: 16}}
        weights: {{file: weights.safetensors, sha256: "{sha}"}}
        adaptive: {{gradient: exact, randomized: {str(randomized).lower()}, eot: {eot}}}
        measured: {{clean_accuracy: {acc}, n: 10000, split: test}}
        ''')


@pytest.fixture(scope="module")
def full_test_accuracy(tiny_cnn) -> float:
    """The tiny CNN's accuracy on all 10,000 MNIST test images (what a submitter measures)."""
    from robustgen_bench.data import load_tensors

    x, y = load_tensors("mnist", "test")
    with torch.no_grad():
        return float((tiny_cnn(x).argmax(1) == y).float().mean())


@pytest.fixture()
def user_zoo(tmp_path: Path, tiny_cnn, full_test_accuracy: float) -> Path:
    """A zoo root holding one user entry built from model.py in its folder."""
    folder = tmp_path / "mnist" / "user-cnn"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(MODEL_PY)
    save_file({k: v.contiguous() for k, v in tiny_cnn.state_dict().items()},
              str(folder / "weights.safetensors"))
    sha = sha256_file(folder / "weights.safetensors")
    (folder / "entry.yaml").write_text(_entry_yaml(sha, round(full_test_accuracy, 4)))
    return tmp_path


def test_user_entry_builds_and_passes_check(user_zoo: Path) -> None:
    entry = get_entry("mnist/user-cnn", user_zoo)
    defense = build_defense(entry)
    assert type(defense).__name__ == "UserCNN"
    report = check_entries(None, n=200, root=user_zoo)
    assert report.ok, [r for r in report.results if not r.ok]
    assert {r.check for r in report.results} == {
        "schema", "sha256", "load", "clean_accuracy", "gradient", "randomness"}


def test_user_entry_via_env(user_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGBENCH_ZOO", str(user_zoo))
    assert check_entries(["mnist/user-cnn"], n=100).ok


def test_wrong_measured_accuracy_fails(user_zoo: Path) -> None:
    f = user_zoo / "mnist/user-cnn/entry.yaml"
    sha = sha256_file(f.parent / "weights.safetensors")
    f.write_text(_entry_yaml(sha, 0.5))
    report = check_entries(None, n=200, root=user_zoo)
    [row] = [r for r in report.results if r.check == "clean_accuracy"]
    assert not row.ok and "measured 0.5000" in row.message
    assert not report.ok


def test_tolerance_is_binomial() -> None:
    assert accuracy_tolerance(0.99, 10000) == pytest.approx(3 * (0.99 * 0.01 / 10000) ** 0.5 + 0.01)
    assert accuracy_tolerance(0.5, 100) > accuracy_tolerance(0.5, 10000)


def _failed(report, check: str) -> str:
    rows = [r for r in report.results if r.check == check]
    assert rows and not rows[0].ok, report.results
    assert not report.ok
    return rows[0].message


def test_wrong_sha256(user_zoo: Path) -> None:
    f = user_zoo / "mnist/user-cnn/entry.yaml"
    f.write_text(_entry_yaml("ab" * 32, 0.9))
    with pytest.raises(ZooError) as e:
        build_defense(get_entry("mnist/user-cnn", user_zoo))
    assert e.value.key == "weights" and str(f) in str(e.value) and "sha256 mismatch" in str(e.value)
    assert "sha256 mismatch" in _failed(check_entries(None, n=50, root=user_zoo), "sha256")


def test_missing_weights(user_zoo: Path) -> None:
    (user_zoo / "mnist/user-cnn/weights.safetensors").unlink()
    with pytest.raises(ZooError) as e:
        build_defense(get_entry("mnist/user-cnn", user_zoo))
    assert e.value.key == "weights" and "missing" in str(e.value)
    assert "missing" in _failed(check_entries(None, n=50, root=user_zoo), "sha256")


def test_unknown_family(user_zoo: Path) -> None:
    f = user_zoo / "mnist/user-cnn/entry.yaml"
    sha = sha256_file(f.parent / "weights.safetensors")
    f.write_text(_entry_yaml(sha, 0.9, source="family: cnnn"))
    with pytest.raises(ZooError) as e:
        build_defense(get_entry("mnist/user-cnn", user_zoo))
    assert e.value.key == "family" and "'cnn'" in str(e.value)  # did-you-mean
    msg = _failed(check_entries(None, n=50, root=user_zoo), "load")
    assert "family" in msg and str(f) in msg


def test_bad_yaml(user_zoo: Path) -> None:
    f = user_zoo / "mnist/user-cnn/entry.yaml"
    f.write_text("id: mnist/user-cnn\nname: [unclosed\n")
    with pytest.raises(ZooError) as e:
        get_entry("mnist/user-cnn", user_zoo)
    assert str(f) in str(e.value) and "invalid YAML" in str(e.value)
    assert "invalid YAML" in _failed(check_entries(None, n=50, root=user_zoo), "schema")


def test_randomized_needs_eot(user_zoo: Path) -> None:
    f = user_zoo / "mnist/user-cnn/entry.yaml"
    sha = sha256_file(f.parent / "weights.safetensors")
    f.write_text(_entry_yaml(sha, 0.9, randomized=True, eot=1))
    assert "eot >= 2" in _failed(check_entries(None, n=50, root=user_zoo), "randomness")


def test_unknown_id_is_a_failed_row(user_zoo: Path) -> None:
    report = check_entries(["mnist/user-cn"], n=50, root=user_zoo)
    assert not report.ok and "mnist/user-cnn" in report.results[0].message


def test_cli_check_and_list(user_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustgen_bench.cli_zoo import zoo_app

    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells in a narrow terminal
    runner = CliRunner()
    ok = runner.invoke(zoo_app, ["check", "--n", "100", "--root", str(user_zoo)])
    assert ok.exit_code == 0, ok.output
    listed = runner.invoke(zoo_app, ["list", "--root", str(user_zoo)])
    assert listed.exit_code == 0 and "mnist/user-cnn" in listed.output
    (user_zoo / "mnist/user-cnn/weights.safetensors").write_bytes(b"tampered")
    bad = runner.invoke(zoo_app, ["check", "--n", "100", "--root", str(user_zoo)])
    assert bad.exit_code == 1
    assert "mnist/user-cnn:sha256" in bad.output


def test_zoo_check_exit_codes_through_the_console_script(user_zoo: Path) -> None:
    # CI trusts the exit code: 0 all passed, 1 a check failed (typer.Exit(1) used to become 0)
    ok = run_cli("zoo", "check", "--n", "100", "--root", user_zoo)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "checks passed" in ok.stdout
    (user_zoo / "mnist/user-cnn/weights.safetensors").write_bytes(b"tampered")
    bad = run_cli("zoo", "check", "--n", "100", "--root", user_zoo, columns="40")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "sha256 mismatch" in bad.stdout and "mnist/user-cnn" in bad.stdout
    assert "failed: mnist/user-cnn:sha256" in bad.stderr


def test_measure_records_accuracy(user_zoo: Path) -> None:
    from robustgen_bench.zoo_check import measure_clean_accuracy

    f = user_zoo / "mnist/user-cnn/entry.yaml"
    sha = sha256_file(f.parent / "weights.safetensors")
    f.write_text(_entry_yaml(sha, 0.5).replace("clean_accuracy: 0.5", "clean_accuracy: null"))
    assert "measured.clean_accuracy" in _failed(check_entries(None, n=100, root=user_zoo), "clean_accuracy")
    acc = measure_clean_accuracy("mnist/user-cnn", n=300, root=user_zoo)
    entry = get_entry("mnist/user-cnn", user_zoo)
    assert entry.measured["clean_accuracy"] == round(acc, 4) and entry.measured["n"] == 300
    assert "# a comment that must survive" in f.read_text()
    assert check_entries(None, n=300, root=user_zoo).ok
    # a block-style measured: gets its command rewritten to the one that produced the number
    block = "measured:\n  clean_accuracy: 0.1\n  n: 5\n  command: rgbench zoo measure mnist/user-cnn --n 5\n"
    f.write_text(re.sub(r"measured: \{.*\}\n", block, f.read_text()))
    assert measure_clean_accuracy("mnist/user-cnn", n=200, root=user_zoo, batch_size=64) == pytest.approx(
        get_entry("mnist/user-cnn", user_zoo).measured["clean_accuracy"], abs=5e-5)
    assert get_entry("mnist/user-cnn", user_zoo).measured["command"] == "rgbench zoo measure mnist/user-cnn --n 200"


def test_measure_appends_a_missing_measured_block(user_zoo: Path) -> None:
    """A new entry without ``measured:`` gets the block instead of losing the measurement."""
    from robustgen_bench.zoo_check import measure_clean_accuracy

    f = user_zoo / "mnist/user-cnn/entry.yaml"
    f.write_text(re.sub(r"measured: \{.*\}\n", "", f.read_text()))
    assert "measured:" not in f.read_text()
    acc = measure_clean_accuracy("mnist/user-cnn", n=100, root=user_zoo)
    entry = get_entry("mnist/user-cnn", user_zoo)
    assert entry.measured["clean_accuracy"] == round(acc, 4) and entry.measured["n"] == 100
    assert entry.measured["command"] == "rgbench zoo measure mnist/user-cnn --n 100"
    assert entry.measured["split"] == "test"
