"""RobustBench models as zoo entries (family ``robustbench``).

No RobustBench checkpoint or CIFAR-10 data exists on these machines: the tests save a checkpoint
of a RobustBench architecture (ResNet-18 of ``Sehwag2021Proxy_R18``, the robust ResNet-18 kind
thesis Table 4.3 uses as VRS base) with known random weights at RobustBench's offline path, then
build the entry through the zoo and compare with the directly built model.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from robustgen_bench.defenses.robustbench_zoo import clean_state_dict, import_robustbench
from robustgen_bench.errors import ZooError
from robustgen_bench.zoo import build_defense, get_entry, parse_entry

NAME, DATASET, THREAT = "Sehwag2021Proxy_R18", "cifar10", "Linf"
ADAPTIVE = "adaptive: {gradient: exact, randomized: false, eot: 1}\n"


def test_key_cleanup_without_robustbench() -> None:
    t = torch.zeros(1)
    assert clean_state_dict({"state_dict": {"module.model.a": t, "module.b": t}}) == {"a": t, "b": t}
    assert clean_state_dict({"last": {"model.a": t}}) == {"a": t}
    # RobustBench's ImageNet wrapper keeps its network under `model.`: the prefix is put back.
    assert clean_state_dict({"a": t}, model_keys={"model.a"}) == {"model.a": t}
    with pytest.raises(ValueError, match="state dict of tensors"):
        clean_state_dict({"epoch": 3})


def test_entry_schema_names_the_robustbench_model(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "rb"
    folder.mkdir(parents=True)
    (folder / "entry.yaml").write_text(
        "id: cifar10/rb\nname: RB\nfamily: robustbench\ndataset: cifar10\n"
        f"config: {{name: {NAME}, dataset: cifar10, threat_model: Linf}}\n"
        f"weights: {{file: Other.pt, sha256: \"{'0' * 64}\"}}\n" + ADAPTIVE)
    e = parse_entry(folder / "entry.yaml", tmp_path)
    with pytest.raises(ZooError, match=f"expected {NAME}.pt"):
        e.weight_path(e.weights[0])
    (folder / "entry.yaml").write_text(
        "id: cifar10/rb\nname: RB\nfamily: robustbench\ndataset: cifar10\n"
        f"config: {{name: {NAME}, dataset: cifar10, threat_model: Lmax}}\n"
        f"weights: {{file: {NAME}.pt, sha256: \"{'0' * 64}\"}}\n" + ADAPTIVE)
    e = parse_entry(folder / "entry.yaml", tmp_path)
    with pytest.raises(ZooError, match="threat_model"):
        e.weight_path(e.weights[0])


@pytest.fixture(scope="module")
def rb_model():
    """RobustBench's own ResNet-18 for the entry, with known random weights (seed 0)."""
    pytest.importorskip("timm", reason="the robustbench tests need the [robustbench] extra "
                        "(pip install -e '.[robustbench]'; scripts/setup.sh test installs it)")
    try:
        import_robustbench()
    except ModuleNotFoundError as e:
        pytest.skip(f"robustbench is not installed: {e}")
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    model = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][NAME]["model"]()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save(cache: Path, obj) -> tuple[Path, str]:
    path = cache / DATASET / THREAT / f"{NAME}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(root: Path, sha: str, entry_id: str = "cifar10/rb-r18") -> Path:
    folder = root / entry_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "entry.yaml").write_text(
        f"id: {entry_id}\nname: RobustBench {NAME}\nfamily: robustbench\ndataset: cifar10\n"
        f"config: {{name: {NAME}, dataset: {DATASET}, threat_model: {THREAT}}}\n"
        f"weights: {{file: {NAME}.pt, sha256: \"{sha}\"}}\n" + ADAPTIVE)
    return folder


@pytest.fixture()
def rb_zoo(tmp_path: Path, rb_model, monkeypatch: pytest.MonkeyPatch):
    """A zoo with the entry and a weights cache holding its checkpoint at the offline path.

    The checkpoint has the layout of a DataParallel training checkpoint (``state_dict`` with
    ``module.`` keys), which RobustBench's key clean-up handles.
    """
    root, cache = tmp_path / "zoo", tmp_path / "weights"
    monkeypatch.setenv("RGBENCH_ZOO", str(root))
    monkeypatch.setenv("RGBENCH_WEIGHTS", str(cache))
    state = {f"module.{k}": v for k, v in rb_model.state_dict().items()}
    path, sha = _save(cache, {"state_dict": state, "epoch": torch.tensor(200)})
    _entry(root, sha)
    return root, cache, path


def test_entry_builds_and_matches_the_direct_model(rb_zoo, rb_model) -> None:
    root, cache, path = rb_zoo
    entry = get_entry("cifar10/rb-r18", root)
    assert entry.weight_path(entry.weights[0]) == path  # <cache>/cifar10/Linf/<name>.pt
    defense = build_defense(entry)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = rb_model(x)
    assert defense.predict(x).shape == (3, 10)
    torch.testing.assert_close(defense.predict(x), expected, rtol=0, atol=1e-5)
    # The adaptive hook of an exact entry: differentiable end to end.
    xg = x.clone().requires_grad_(True)
    defense.surrogate_logits(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_sha256_mismatch_is_refused_before_loading(rb_zoo) -> None:
    root, cache, path = rb_zoo
    _entry(root, "f" * 64, "cifar10/rb-bad-sha")
    with pytest.raises(ZooError, match="sha256 mismatch"):
        build_defense(get_entry("cifar10/rb-bad-sha", root))


def test_missing_checkpoint_names_the_offline_path(rb_zoo) -> None:
    root, cache, path = rb_zoo
    path.unlink()
    with pytest.raises(ZooError, match=r"cifar10/Linf/Sehwag2021Proxy_R18\.pt"):
        build_defense(get_entry("cifar10/rb-r18", root))


def test_loading_is_strict(rb_zoo, rb_model) -> None:
    root, cache, path = rb_zoo
    state = dict(rb_model.state_dict())
    state.pop("linear.weight" if "linear.weight" in state else next(iter(state)))
    _, sha = _save(cache, state)
    _entry(root, sha)
    with pytest.raises(ZooError, match="Missing key"):
        build_defense(get_entry("cifar10/rb-r18", root))


class _Payload:  # a pickle that would run code under a plain torch.load
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_no_pickle_execution(rb_zoo, rb_model, capsys) -> None:
    root, cache, path = rb_zoo
    _, sha = _save(cache, {"state_dict": rb_model.state_dict(), "payload": _Payload()})
    _entry(root, sha)
    with pytest.raises((ZooError, pickle.UnpicklingError)):
        build_defense(get_entry("cifar10/rb-r18", root))
    assert "pickle code ran" not in capsys.readouterr().out


def test_unknown_model_name_suggests_one(rb_zoo) -> None:
    root, cache, path = rb_zoo
    folder = _entry(root, "0" * 64, "cifar10/rb-typo")
    text = (folder / "entry.yaml").read_text().replace(f"name: {NAME},", "name: Sehwag2021Proxy_R1,")
    (folder / "entry.yaml").write_text(text)
    with pytest.raises(ZooError, match="Did you mean"):
        build_defense(get_entry("cifar10/rb-typo", root), load_weights=False)


def test_vrs_over_a_robustbench_base(rb_zoo, rb_model) -> None:
    """Thesis Table 4.3's shape: VRS wrapping a robust ResNet-18 on CIFAR-10."""
    root, cache, path = rb_zoo
    folder = root / "cifar10" / "vrs-rb-r18"
    folder.mkdir(parents=True)
    (folder / "entry.yaml").write_text(
        "id: cifar10/vrs-rb-r18\nname: VRS (RobustBench R18)\nfamily: vrs\nbase: cifar10/rb-r18\n"
        "dataset: cifar10\nconfig: {norm: linf, radius: 0.03, steps: 1, sigma: 0.05, samples: 2}\n"
        "weights: []\nadaptive: {gradient: exact, randomized: true, eot: 1}\n")
    vrs = build_defense(get_entry("cifar10/vrs-rb-r18", root))
    torch.testing.assert_close(vrs.base.predict(torch.zeros(1, 3, 32, 32)),
                               rb_model(torch.zeros(1, 3, 32, 32)).detach(), rtol=0, atol=1e-5)
    out = vrs.predict(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_zoo_check_suite_run_and_model_card(rb_zoo, rb_model, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry works where any entry does: `rgbench zoo check`, a suite run, a model card.

    There is no CIFAR-10 here: a stand-in test split of 16 random 32x32 images, labelled with the
    model's own predictions except the last 4 (so clean accuracy is 75%).
    """
    import json

    import robustgen_bench.data as data_mod
    from robustgen_bench.config import load_suite
    from robustgen_bench.model_cards import model_cards
    from robustgen_bench.runner import run_suite
    from robustgen_bench.zoo_check import check_entries

    root, cache, path = rb_zoo
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = rb_model(x).argmax(1)
    y[12:] = (y[12:] + 1) % 10
    monkeypatch.setattr(data_mod, "load_tensors", lambda name, split, root=None: (x, y))
    entry_file = root / "cifar10" / "rb-r18" / "entry.yaml"
    entry_file.write_text(entry_file.read_text()
                          + "measured: {clean_accuracy: 0.75, n: 16, split: test}\n"
                          + "architecture: ResNet-18\nvenue: arXiv 2021\nadditional_data: true\n")
    report = check_entries(["cifar10/rb-r18"], n=16, root=root)
    assert report.ok, [(r.check, r.message) for r in report.failures]
    assert [r.check for r in report.results] == ["schema", "sha256", "load", "clean_accuracy",
                                                  "gradient", "randomness"]

    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: rb-e2e\ndataset: {name: cifar10, split: test, n: 8, seed: 0}\n"
        "models: [cifar10/rb-r18]\nrun: {batch_size: 8}\nattacks:\n"
        "  - {id: pgd, library: foolbox, attack: LinfPGD, threat: linf, epsilon: 8/255, steps: 2,"
        " rel_stepsize: 0.5}\n")
    run = run_suite(load_suite(suite), tmp_path / "run")
    cards = model_cards(run)
    card = cards["cifar10/Linf/Sehwag2021Proxy_R18.json"]
    assert card["eps"] == "8/255" and card["architecture"] == "ResNet-18"
    assert card["additional_data"] is True and card["autoattack_acc"] == ""  # no AutoAttack cell
    idx = torch.as_tensor(json.loads((run / "manifest.json").read_text())["dataset"]["indices"])
    with torch.no_grad():
        expected = (rb_model(x[idx]).argmax(1) == y[idx]).float().mean().item()
    assert card["clean_acc"] == f"{100 * expected:.2f}"


def test_download_helper_writes_the_offline_layout(rb_model, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`python -m robustgen_bench.defenses.robustbench_zoo download NAME` (its network call faked)."""
    import robustbench.utils

    from robustgen_bench.defenses import robustbench_zoo

    calls = []

    def fake(gid, dest):
        calls.append(gid)
        torch.save(rb_model.state_dict(), dest)

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", fake)
    monkeypatch.setenv("RGBENCH_WEIGHTS", str(tmp_path / "w"))
    assert robustbench_zoo.main(["download", NAME]) == 0
    path = tmp_path / "w" / DATASET / THREAT / f"{NAME}.pt"
    out = capsys.readouterr().out
    assert str(path) in out and hashlib.sha256(path.read_bytes()).hexdigest() in out
    assert len(calls) == 1 and isinstance(calls[0], str)
    robustbench_zoo.main(["download", NAME])  # present: not fetched again
    assert len(calls) == 1
