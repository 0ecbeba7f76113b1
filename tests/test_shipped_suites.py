"""Every shipped suite validates against the shipped zoo and the registered attacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustgen_bench.config import load_suite

SUITES = sorted((Path(__file__).resolve().parent.parent / "attack_suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_is_valid(path: Path):
    suite = load_suite(path)
    assert suite.models and suite.attacks
    assert len({(a.id, a.epsilon) for a in suite.attacks}) == len(suite.attacks)


def test_quickstart_is_the_readme_default():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "rgbench run attack_suites/quickstart.yaml" in readme.split("\n\n")[1]
