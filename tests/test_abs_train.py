"""ABS / E-ABS training recipes: loss goes down, resume is exact, every ablation trains, keys load."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from robustgen_bench.train import TrainContext, train_entry
from robustgen_bench.train.abs_recipes import (GenerativeTrainSpec, build_nets, generator_loss,
                                               make_optimizers, train_step)

N_SMALL = 160


@pytest.fixture(scope="module")
def mnist_train_small(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 160 MNIST training images: x (160, 1, 28, 28), y (160,)."""
    from robustgen_bench.data import load_tensors

    x, y = load_tensors("mnist", "train", data_dir)
    return x[:N_SMALL].clone(), y[:N_SMALL].clone()


def _write_entry(root: Path, name: str, config: dict, train: dict) -> str:
    entry_id = f"mnist/{name}"
    d = root / entry_id
    d.mkdir(parents=True)
    raw = {
        "id": entry_id, "name": name, "family": "eabs", "dataset": "mnist", "config": config,
        "weights": {"file": "weights.safetensors", "sha256": "0" * 64},
        "adaptive": {"gradient": "detached_zstar", "randomized": False, "eot": 1},
        "train": train,
    }
    (d / "entry.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return entry_id


@pytest.fixture()
def small_data(monkeypatch: pytest.MonkeyPatch, mnist_train_small) -> tuple[torch.Tensor, torch.Tensor]:
    """Recipes see only ``mnist_train_small`` (10% of it held out for validation)."""
    monkeypatch.setattr(TrainContext, "load_data", lambda self, split: mnist_train_small)
    return mnist_train_small


ABS_CONFIG = {"latent_dim": 10, "shared_encoder": False, "aae": False, "variational": False}
EABS_CONFIG = {"latent_dim": 10, "shared_encoder": True, "aae": True, "variational": True}


def _objective(nets, spec: GenerativeTrainSpec, x: torch.Tensor, y: torch.Tensor) -> float:
    """The training objective on (x, y) at a fixed noise draw (dropout off)."""
    nets.eval()
    torch.manual_seed(123)
    x_in = (x + spec.noise_sigma * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        loss, _, _ = generator_loss(nets, spec, x_in, x, y)
    return float(loss)


@pytest.mark.parametrize(("recipe", "config"), [("abs_vae", ABS_CONFIG), ("eabs", EABS_CONFIG)])
def test_one_epoch_reduces_loss(tmp_path: Path, small_data, recipe: str, config: dict) -> None:
    x, y = small_data
    train = {"recipe": recipe, "epochs": 1, "seed": 0, "batch_size": 32, "lr": 1e-3,
             "beta": 1.0, "gamma": 10.0, "noise_sigma": 0.2}
    entry_id = _write_entry(tmp_path / "zoo", recipe, config, train)
    spec = GenerativeTrainSpec.from_entry(config, train)
    torch.manual_seed(0)  # the recipe initialises with the same seed
    before = _objective(build_nets(config), spec, x, y)
    path = train_entry(entry_id, root=tmp_path / "zoo", checkpoint_root=tmp_path / "ckpt")
    nets = build_nets(config)
    nets.load_state_dict(load_file(str(path)), strict=True)
    after = _objective(nets, spec, x, y)
    assert after < 0.9 * before, (before, after)
    # the deployed family (defenses/abs.py) loads the file strictly with the same config
    from robustgen_bench.defenses.abs import build_abs, build_eabs

    defense = (build_eabs if config["shared_encoder"] else build_abs)(dict(config))
    defense.load_weight_files({"weights.safetensors": path})
    text = (tmp_path / "zoo" / entry_id / "entry.yaml").read_text()
    assert "0" * 64 not in text  # the sha256 was filled in


def test_resume_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     mnist_train_small) -> None:
    x, y = mnist_train_small
    small = (x[:40], y[:40])
    monkeypatch.setattr(TrainContext, "load_data", lambda self, split: small)
    train = {"recipe": "eabs", "epochs": 2, "seed": 3, "batch_size": 18, "lr": 1e-3,
             "beta": 1.0, "gamma": 10.0, "noise_sigma": 0.2}
    a = _write_entry(tmp_path / "a", "eabs", EABS_CONFIG, train)
    b = _write_entry(tmp_path / "b", "eabs", EABS_CONFIG, train)
    wa = train_entry(a, root=tmp_path / "a", checkpoint_root=tmp_path / "ca")
    train_entry(b, root=tmp_path / "b", checkpoint_root=tmp_path / "cb", epochs=1)
    wb = train_entry(b, root=tmp_path / "b", checkpoint_root=tmp_path / "cb", epochs=2)
    sa, sb = load_file(str(wa)), load_file(str(wb))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # and a different seed really gives different weights (the comparison can fail)
    c = _write_entry(tmp_path / "c", "eabs", EABS_CONFIG, {**train, "seed": 4})
    sc = load_file(str(train_entry(c, root=tmp_path / "c", checkpoint_root=tmp_path / "cc")))
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_schedule_changed_after_the_checkpoint_resumes_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_train_small) -> None:
    """Halving the rate from epoch 3 on, set after 2 epochs at the default schedule, resumes and
    ends bitwise equal to a run that had the halving from the start; a schedule that changes a
    finished epoch's rate, or any other key, is refused."""
    from robustgen_bench.errors import ZooError

    x, y = mnist_train_small
    small = (x[:40], y[:40])
    monkeypatch.setattr(TrainContext, "load_data", lambda self, split: small)
    train = {"recipe": "eabs", "epochs": 2, "seed": 3, "batch_size": 18, "lr": 1e-3,
             "beta": 1.0, "gamma": 10.0, "noise_sigma": 0.2}
    full = _write_entry(tmp_path / "full", "eabs", EABS_CONFIG, {**train, "epochs": 3, "lr_halve_every": 2})
    s_full = load_file(str(train_entry(full, root=tmp_path / "full", checkpoint_root=tmp_path / "cf")))
    late = _write_entry(tmp_path / "late", "eabs", EABS_CONFIG, train)
    train_entry(late, root=tmp_path / "late", checkpoint_root=tmp_path / "cl")

    def set_train(**changes: object) -> None:
        f = tmp_path / "late" / late / "entry.yaml"
        raw = yaml.safe_load(f.read_text())
        raw["train"] = {**train, **changes}
        f.write_text(yaml.safe_dump(raw, sort_keys=False))

    for bad in ({"lr_halve_every": 1}, {"lr": 5e-4}, {"lr_halve_every": 2, "gamma": 5.0}):
        set_train(epochs=3, **bad)
        with pytest.raises(ZooError, match="different training config"):
            train_entry(late, root=tmp_path / "late", checkpoint_root=tmp_path / "cl")
    set_train(epochs=3, lr_halve_every=2)
    s_late = load_file(str(train_entry(late, root=tmp_path / "late", checkpoint_root=tmp_path / "cl")))
    for k in s_full:
        assert torch.equal(s_full[k], s_late[k]), k
    # the halving really changes epoch 3: without it the weights differ
    plain = _write_entry(tmp_path / "plain", "eabs", EABS_CONFIG, {**train, "epochs": 3})
    s_plain = load_file(str(train_entry(plain, root=tmp_path / "plain", checkpoint_root=tmp_path / "cp")))
    assert not all(torch.equal(s_full[k], s_plain[k]) for k in s_full)


def test_warm_start_from_weights_equals_training_through_the_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_train_small) -> None:
    """A run from scratch with ``train.warm_start`` and one that loads the weights after the
    restart epoch (``--warm-start``) end bitwise equal; a file with another sha256 is refused."""
    from robustgen_bench.errors import ZooError
    from robustgen_bench.zoo import sha256_file

    x, y = mnist_train_small
    small = (x[:40], y[:40])
    monkeypatch.setattr(TrainContext, "load_data", lambda self, split: small)
    train = {"recipe": "eabs", "epochs": 1, "seed": 3, "batch_size": 18, "lr": 1e-3,
             "beta": 1.0, "gamma": 10.0, "noise_sigma": 0.2}
    first = _write_entry(tmp_path / "w1", "eabs", EABS_CONFIG, train)
    w1 = train_entry(first, root=tmp_path / "w1", checkpoint_root=tmp_path / "c1")
    ws = {"epoch": 1, "sha256": sha256_file(w1)}
    full = _write_entry(tmp_path / "full", "eabs", EABS_CONFIG, {**train, "epochs": 3, "warm_start": ws})
    warm = _write_entry(tmp_path / "warm", "eabs", EABS_CONFIG, {**train, "epochs": 3, "warm_start": ws})
    s_full = load_file(str(train_entry(full, root=tmp_path / "full", checkpoint_root=tmp_path / "cf")))
    s_warm = load_file(str(train_entry(warm, root=tmp_path / "warm", checkpoint_root=tmp_path / "cw",
                                       warm_start=w1)))
    assert s_full.keys() == s_warm.keys()
    for k in s_full:
        assert torch.equal(s_full[k], s_warm[k]), k
    # the restart really happens: without it (same epochs, Adam state kept) the weights differ
    plain = _write_entry(tmp_path / "plain", "eabs", EABS_CONFIG, {**train, "epochs": 3})
    s_plain = load_file(str(train_entry(plain, root=tmp_path / "plain", checkpoint_root=tmp_path / "cp")))
    assert not all(torch.equal(s_full[k], s_plain[k]) for k in s_full)
    # a file that is not the recorded one is refused, naming the key
    bad = _write_entry(tmp_path / "bad", "eabs", EABS_CONFIG,
                       {**train, "epochs": 3, "warm_start": {"epoch": 1, "sha256": "a" * 64}})
    with pytest.raises(ZooError, match="sha256") as e:
        train_entry(bad, root=tmp_path / "bad", checkpoint_root=tmp_path / "cb", warm_start=w1)
    assert e.value.key == "train.warm_start.sha256"
    with pytest.raises(ZooError, match="needs train.warm_start"):
        train_entry(plain, root=tmp_path / "plain", checkpoint_root=tmp_path / "cp2", warm_start=w1)


@pytest.mark.parametrize(("a", "d", "v"), list(itertools.product([False, True], repeat=3)))
def test_every_ablation_builds_and_trains_one_step(mnist_train_small, a: bool, d: bool, v: bool) -> None:
    x, y = mnist_train_small
    x, y = x[:24], y[:24]
    config = {"latent_dim": 10, "shared_encoder": d, "aae": a, "variational": v}
    spec = GenerativeTrainSpec.from_entry(config, {"batch_size": 24})
    torch.manual_seed(0)
    nets = build_nets(config)
    assert len(nets.encoders) == (1 if d else 10)
    assert len(nets.discriminators) == (0 if not a else (1 if d else 10))
    opts = make_optimizers(nets, spec)
    before = {k: t.clone() for k, t in nets.state_dict().items()}
    out = train_step(nets, spec, opts, x, y)
    assert all(torch.isfinite(torch.tensor(val)) for val in out.values())
    assert ("d_loss" in out) == a and ("ce" in out) == d
    after = nets.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert "encoders" in changed and "decoders" in changed
    assert ("discriminators" in changed) == a


def test_saved_keys_load_strictly_into_generative_nets() -> None:
    """The shipped entries' weights (when trained) are exactly a GenerativeNets state dict."""
    from robustgen_bench.zoo import build_defense, get_entry, sha256_file

    checked = 0
    for entry_id in ("mnist/abs", "mnist/eabs", "fashion-mnist/abs", "fashion-mnist/eabs"):
        entry = get_entry(entry_id)
        w = entry.weight_path(entry.weights[0])
        if not w.is_file() or sha256_file(w) != entry.weights[0].sha256:
            continue  # not trained in this checkout yet
        nets = build_nets(entry.config)
        nets.load_state_dict(load_file(str(w)), strict=True)
        build_defense(entry)  # and the zoo builds the deployed defense from them (strict)
        checked += 1
    if checked == 0:
        pytest.skip("no trained ABS/E-ABS weights in this checkout")
