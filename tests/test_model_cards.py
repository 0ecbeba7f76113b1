"""``rgbench export RUN_DIR --format robustbench``: RobustBench model-info JSON per model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_stats_store import Cell, Run, write_run

from robustgen_bench.cli import main
from robustgen_bench.errors import UserInputError
from robustgen_bench.model_cards import CARD_FIELDS, model_cards, percent
from robustgen_bench.store import read_manifest, write_manifest

T, F = True, False
EPS = 8 / 255


def _zoo(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two entries: one with every publication key, one with none."""
    (root / "cifar10" / "rb").mkdir(parents=True)
    (root / "cifar10" / "rb" / "entry.yaml").write_text(
        "id: cifar10/rb\nname: Unlabeled Data Improves Adversarial Robustness\nfamily: cnn\n"
        "dataset: cifar10\nadaptive: {gradient: exact, randomized: false, eot: 1}\n"
        "link: https://arxiv.org/abs/1905.13736\nauthors: Yair Carmon, Aditi Raghunathan\n"
        "venue: NeurIPS 2019\narchitecture: WideResNet-28-10\nadditional_data: true\n"
        "claimed: {robust_accuracy: 0.6253}\n")
    (root / "cifar10" / "plain").mkdir(parents=True)
    (root / "cifar10" / "plain" / "entry.yaml").write_text(
        "id: cifar10/plain\nname: Plain\nfamily: cnn\ndataset: cifar10\n"
        "adaptive: {gradient: exact, randomized: false, eot: 1}\n")
    monkeypatch.setenv("RGBENCH_ZOO", str(root))


def _run(tmp_path: Path, libraries: dict[str, str], extra_cells: list[Cell] = ()) -> Path:
    models = {"cifar10/rb": "RB", "cifar10/plain": "Plain"}
    clean = {"cifar10/rb": [T, T, T, T, T, T, T, F], "cifar10/plain": [T, T, T, T, T, T, F, F]}
    cells = [Cell("cifar10/rb", "aa", "linf", EPS, [T, T, T, T, T, F, F, F]),
             Cell("cifar10/plain", "aa", "linf", EPS, [T, T, F, F, F, F, F, F]),
             Cell("cifar10/rb", "pgd", "linf", EPS, [T, T, T, F, T, F, F, F]),
             Cell("cifar10/plain", "pgd", "linf", EPS, [T, T, T, F, F, F, F, F]),
             *extra_cells]
    run = write_run(tmp_path / "run", Run(models, clean, cells, dataset="cifar10"))
    man = read_manifest(run)
    for a in man["suite"]["attacks"]:
        a["library"] = libraries.get(a["id"], "foolbox")
    man["dataset"]["name"] = "cifar10"
    write_manifest(run, man)
    return run


def test_cards_have_exactly_robustbenchs_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _zoo(tmp_path / "zoo", monkeypatch)
    run = _run(tmp_path, {"aa": "autoattack"})
    cards = model_cards(run)
    assert set(cards) == {"cifar10/Linf/cifar10_rb.json", "cifar10/Linf/cifar10_plain.json"}
    rb = cards["cifar10/Linf/cifar10_rb.json"]
    # AutoAttack 5/8; pgd AND aa per sample = {0,1,2,4} = 4/8 < 5/8: another attack is stronger.
    assert list(rb) == [*CARD_FIELDS, "external"]
    assert rb == {"link": "https://arxiv.org/abs/1905.13736",
                  "name": "Unlabeled Data Improves Adversarial Robustness",
                  "authors": "Yair Carmon, Aditi Raghunathan", "additional_data": True,
                  "number_forward_passes": 1, "dataset": "cifar10", "venue": "NeurIPS 2019",
                  "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "87.50",
                  "reported": "62.53", "autoattack_acc": "62.50", "unreliable": False,
                  "external": "50.00"}
    plain = cards["cifar10/Linf/cifar10_plain.json"]
    # AutoAttack 2/8; the worst case with pgd is still 2/8: no external key.
    assert list(plain) == list(CARD_FIELDS)
    assert (plain["clean_acc"], plain["autoattack_acc"], plain["link"], plain["reported"]) == \
        ("75.00", "25.00", "", "")


def test_autoattack_acc_only_with_an_autoattack_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _zoo(tmp_path / "zoo", monkeypatch)
    run = _run(tmp_path, {})  # both attacks are foolbox attacks
    rb = model_cards(run)["cifar10/Linf/cifar10_rb.json"]
    assert rb["autoattack_acc"] == "" and rb["external"] == "50.00"


def test_unreliable_comes_from_the_checks_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _zoo(tmp_path / "zoo", monkeypatch)
    run = _run(tmp_path, {"aa": "autoattack"})
    (run / "checks.json").write_text(json.dumps({"cifar10/plain": {"unreliable": True}}))
    cards = model_cards(run)
    assert cards["cifar10/Linf/cifar10_plain.json"]["unreliable"] is True
    assert cards["cifar10/Linf/cifar10_rb.json"]["unreliable"] is False


def test_several_budgets_need_a_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _zoo(tmp_path / "zoo", monkeypatch)
    run = _run(tmp_path, {"aa": "autoattack", "aa2": "autoattack"},
               [Cell("cifar10/rb", "aa2", "linf", 16 / 255, [F] * 8),
                Cell("cifar10/plain", "aa2", "linf", 16 / 255, [F] * 8)])
    with pytest.raises(UserInputError, match="several budgets"):
        model_cards(run)
    cards = model_cards(run, threat="linf", epsilon=16 / 255)
    assert cards["cifar10/Linf/cifar10_rb.json"]["eps"] == "16/255"
    assert cards["cifar10/Linf/cifar10_rb.json"]["autoattack_acc"] == "0.00"


def test_export_command_writes_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _zoo(tmp_path / "zoo", monkeypatch)
    run = _run(tmp_path, {"aa": "autoattack"})
    out = tmp_path / "cards"
    assert main(["export", str(run), "--format", "robustbench", "--out", str(out),
                 "--epsilon", "8/255"]) == 0
    card = json.loads((out / "cifar10" / "Linf" / "cifar10_rb.json").read_text())
    assert card["autoattack_acc"] == "62.50"
    assert main(["export", str(run), "--format", "robustbench"]) == 2  # no --out
    assert main(["export", str(run), "--format", "robustbench", "--out", str(out),
                 "--epsilon", "abc"]) == 2


def test_percent_has_two_decimals() -> None:
    assert percent(0.5953) == "59.53" and percent(1.0) == "100.00" and percent(0.0) == "0.00"
