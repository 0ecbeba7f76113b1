"""The CNN recipes run end to end on a slice of MNIST (the shipped entries' configs, 1 epoch)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustgen_bench.train import TrainContext, train_entry
from robustgen_bench.zoo import build_defense, get_entry, sha256_file

REPO_ZOO = Path(__file__).resolve().parent.parent / "model_zoo"


@pytest.fixture()
def small_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copies of the shipped mnist/cnn and mnist/adv-linf entries (no weights), trained on 1024 images."""
    for name in ("cnn", "adv-linf"):
        dst = tmp_path / "zoo" / "mnist" / name
        dst.mkdir(parents=True)
        shutil.copy(REPO_ZOO / "mnist" / name / "entry.yaml", dst / "entry.yaml")
    original = TrainContext.load_data

    def small(self: TrainContext, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = original(self, split)
        return x[:1024], y[:1024]

    monkeypatch.setattr(TrainContext, "load_data", small)
    return tmp_path


@pytest.mark.slow  # ~10 s on an idle machine, over a minute under load
def test_cnn_noise_then_adv_pgd(small_zoo: Path) -> None:
    root, ckpt = small_zoo / "zoo", small_zoo / "ckpt"
    w = train_entry("mnist/cnn", epochs=1, root=root, checkpoint_root=ckpt)
    entry = get_entry("mnist/cnn", root)
    assert entry.weights[0].sha256 == sha256_file(w)
    assert "# Gaussian-noise augmentation" in entry.entry_file.read_text()  # comments survive
    cnn = build_defense(entry)
    w2 = train_entry("mnist/adv-linf", epochs=1, root=root, checkpoint_root=ckpt)
    adv = build_defense(get_entry("mnist/adv-linf", root))
    assert set(load_file(str(w2))) == set(cnn.state_dict())
    # fine-tuning from the CNN changed the weights
    assert not torch.equal(adv.head.weight, cnn.head.weight)
