"""``rgbench zoo new``: a scaffold that parses and that ``rgbench zoo check`` guides to completion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from robustgen_bench.cli import main
from robustgen_bench.zoo import build_defense, parse_entry
from robustgen_bench.zoo_check import check_entries
from robustgen_bench.zoo_new import PLACEHOLDER_SHA, new_entry


def test_builder_scaffold_is_completed_by_following_zoo_check(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    files = new_entry("mnist/my-defense", builder=True, root=root)
    assert sorted(p.name for p in files) == ["README.md", "entry.yaml", "model.py"]
    folder = root / "mnist" / "my-defense"
    raw = yaml.safe_load((folder / "entry.yaml").read_text())
    for key in ("id", "name", "builder", "dataset", "config", "weights", "adaptive", "measured"):
        assert key in raw, key
    assert "TODO" in (folder / "README.md").read_text()
    entry = parse_entry(folder / "entry.yaml", root)
    assert entry.weights[0].sha256 == PLACEHOLDER_SHA

    # 1. zoo check: the weights file is missing.
    report = check_entries(["mnist/my-defense"], n=20, root=root)
    assert [r.check for r in report.failures] == ["sha256"]
    assert "weights file missing" in report.failures[0].message
    # 2. save the template model's weights: zoo check prints the sha256 to paste.
    model = build_defense(entry, load_weights=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "weights.safetensors"))
    sha = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    report = check_entries(["mnist/my-defense"], n=20, root=root)
    assert [r.check for r in report.failures] == ["sha256"] and sha in report.failures[0].message
    text = (folder / "entry.yaml").read_text().replace(PLACEHOLDER_SHA, sha)
    (folder / "entry.yaml").write_text(text)
    # 3. zoo check: the measured accuracy is missing and names the command that records it.
    report = check_entries(["mnist/my-defense"], n=20, root=root)
    assert [r.check for r in report.failures] == ["clean_accuracy"]
    assert "rgbench zoo measure mnist/my-defense" in report.failures[0].message
    # 4. record it as the message says: every check passes.
    assert main(["zoo", "measure", "mnist/my-defense", "--n", "20", "--root", str(root)]) == 0
    report = check_entries(["mnist/my-defense"], n=20, root=root)
    assert report.ok, [(r.check, r.message) for r in report.failures]


@pytest.mark.parametrize("family", ["cnn", "vrs", "robustbench", "abs"])
def test_family_scaffolds_parse(tmp_path: Path, family: str) -> None:
    files = new_entry(f"mnist/new-{family}" if family != "robustbench" else "cifar10/new-rb",
                      family=family, root=tmp_path)
    assert [p.name for p in files] == ["entry.yaml", "README.md"]
    text = files[0].read_text()
    assert f"family: {family}" in text and "adaptive:" in text and "measured:" in text
    if family == "robustbench":
        assert "threat_model: Linf" in text and "<dataset>/<threat_model>/<name>.pt" in text
    if family == "vrs":
        assert "base: TODO" in text


def test_zoo_new_refuses_bad_input(tmp_path: Path) -> None:
    args = ["zoo", "new", "--root", str(tmp_path)]
    assert main([*args, "mnist/x", "--family", "cnnn"]) == 2
    assert main([*args, "mnist/x"]) == 2  # neither --family nor --builder
    assert main([*args, "mnist/x", "--family", "cnn", "--builder"]) == 2
    assert main([*args, "foo/x", "--builder"]) == 2
    assert main([*args, "mnist/Bad Name", "--builder"]) == 2
    assert main([*args, "mnist/x", "--builder"]) == 0
    assert main([*args, "mnist/x", "--builder"]) == 2  # exists: never overwritten
