"""GAN-ABS training parts: every part runs, checkpoints per epoch, and resumes bit-identically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustgen_bench.defenses.gan_abs import GanAbs, GanGeometry, InferenceSettings
from robustgen_bench.train import recipe_names
from robustgen_bench.train.gan_recipes import PARTS, PartSettings, train_parts

TINY = GanGeometry(latent_dim=4, gen_channels=4, embed_dim=4, enc_channels=4, feat_channels=4,
                   disc_channels=4)


def _train(tmp: Path, epochs: int, parts: list[str], data_dir: Path) -> dict[str, torch.Tensor]:
    s = PartSettings(epochs=epochs, seed=3, batch_size=32, limit=64)
    return train_parts(parts, {p: s for p in PARTS}, TINY, "mnist", tmp, data_dir=data_dir,
                       log=lambda m: None)


def test_recipe_is_registered() -> None:
    assert "gan_abs" in recipe_names()


def test_all_parts_train_and_load_into_every_configuration(tmp_path: Path, data_dir: Path) -> None:
    state = _train(tmp_path, 1, list(PARTS), data_dir)
    assert {k.split(".")[0] for k in state} == {"generator", "discriminator", "encoder", "feature_net"}
    for p in PARTS:
        assert (tmp_path / p / "epoch_1.pt").is_file()
    from safetensors.torch import save_file

    f = tmp_path / "w.safetensors"
    save_file(state, str(f))
    for cfg in ({"initialiser": "direct"}, {"initialiser": "enc-d", "distance": "feature"}):
        d = GanAbs(TINY, InferenceSettings(**cfg, steps=1, n_init=4))
        d.load_weight_files({"w": f})  # strict for the parts this config uses
        assert torch.equal(d.generator.fc.weight, state["generator.fc.weight"])
        assert d.predict(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_resume_equals_uninterrupted(tmp_path: Path, data_dir: Path) -> None:
    straight = _train(tmp_path / "a", 2, ["gan", "enc-d"], data_dir)
    _train(tmp_path / "b", 1, ["gan", "enc-d"], data_dir)
    resumed = _train(tmp_path / "b", 2, ["gan", "enc-d"], data_dir)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_fewer_epochs_than_checkpointed_reproduces_that_epoch(tmp_path: Path, data_dir: Path) -> None:
    one = _train(tmp_path / "a", 1, ["gan"], data_dir)
    _train(tmp_path / "b", 2, ["gan"], data_dir)
    again = _train(tmp_path / "b", 1, ["gan"], data_dir)
    for k in one:
        assert torch.equal(one[k], again[k]), k


def test_diversity_term_rewards_spread_up_to_its_cap() -> None:
    from robustgen_bench.train.gan_recipes import diversity

    z = torch.randn(8, 4)
    same = (torch.rand(1, 1, 5, 5) + 1e-4 * torch.randn(8, 1, 5, 5)).requires_grad_(True)
    assert float(diversity(same, z, cap=0.1).detach()) < 1e-3
    (g,) = torch.autograd.grad(diversity(same, z, cap=0.1), same)
    assert g.abs().sum() > 0  # a generator that (almost) ignores z is pushed to use it
    spread = torch.rand(8, 1, 5, 5).requires_grad_(True)
    ratio = ((spread[:4] - spread[4:]).abs().flatten(1).mean(1) / (z[:4] - z[4:]).abs().mean(1))
    assert float(diversity(spread, z, cap=10.0).detach()) == pytest.approx(float(ratio.mean().detach()))
    (g,) = torch.autograd.grad(diversity(spread, z, cap=float(ratio.min().detach()) / 2), spread)
    assert torch.all(g == 0)  # above the cap: no reward for more spread


def test_fingerprint_ignores_new_defaulted_fields_but_not_changed_values() -> None:
    from dataclasses import dataclass

    from robustgen_bench.train.gan_recipes import PartSettings, fingerprint

    @dataclass(frozen=True)
    class Old:
        epochs: int
        lr: float = 2e-4

    @dataclass(frozen=True)
    class Old2:  # the same settings after a release added an option with a default
        epochs: int
        lr: float = 2e-4
        disc_lr: float | None = None

    Old2.__name__ = Old.__name__
    assert fingerprint("gan", Old(0)) == fingerprint("gan", Old2(0))
    assert fingerprint("gan", Old(0)) != fingerprint("gan", Old2(0, disc_lr=4e-4))
    assert fingerprint("gan", Old(0)) != fingerprint("gan", Old(0, lr=1e-4))
    assert fingerprint("gan", Old(0)) != fingerprint("enc", Old(0))
    base = PartSettings(epochs=0)
    assert fingerprint(base) != fingerprint(PartSettings(epochs=0, diversity_weight=10.0))
    assert fingerprint(base) == fingerprint(PartSettings(epochs=0, disc_lr=None))
