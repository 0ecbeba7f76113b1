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


def test_epoch_lr_halves_on_schedule() -> None:
    from robustgen_bench.train.cnn_recipes import epoch_lr

    assert [epoch_lr(1e-3, e, 2) for e in range(5)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    assert epoch_lr(1e-3, 99, None) == 1e-3


def test_random_shift_translates_each_image_within_the_bound() -> None:
    from robustgen_bench.train.cnn_recipes import random_shift

    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the centre of each image
    torch.manual_seed(0)
    out = random_shift(x, 2)
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing lost
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert (rows - 4).abs().max() <= 2 and (cols - 4).abs().max() <= 2
    offsets = set(zip(rows.tolist(), cols.tolist()))
    assert len(offsets) > 10  # per-image offsets, not one shift for the batch
    assert torch.equal(random_shift(x, 0), x)


def test_bad_lr_halve_every_is_a_zoo_error(small_zoo: Path) -> None:
    from robustgen_bench.errors import ZooError

    root = small_zoo / "zoo"
    f = root / "mnist" / "cnn" / "entry.yaml"
    f.write_text(f.read_text().replace("lr_halve_every: 15", "lr_halve_every: 0"))
    with pytest.raises(ZooError, match="lr_halve_every"):
        train_entry("mnist/cnn", epochs=1, root=root, checkpoint_root=small_zoo / "ckpt")


def test_recalibrate_batchnorm_matches_the_statistics_of_the_images() -> None:
    from torch import nn

    from robustgen_bench.train.cnn_recipes import recalibrate_batchnorm

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    model = nn.Sequential(conv, nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    bn = model[1]
    bn.running_mean.fill_(5.0)  # statistics of other (noisy) inputs
    bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    x = torch.rand(64, 1, 8, 8)
    assert recalibrate_batchnorm(model, x, batch_size=64) == 1
    with torch.no_grad():
        feats = conv(x)  # (64, 4, 6, 6): the reference statistics, per channel
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, feats.var((0, 2, 3), unbiased=True))
    assert bn.momentum == 0.1 and not model.training and not bn.training  # restored, eval mode
    after = {k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(after[k], weights[k]) for k in after)  # only the statistics changed
    # several batches: the average of per-batch statistics; deterministic (dropout was off)
    recalibrate_batchnorm(model, x, batch_size=16)
    first = bn.running_mean.clone()
    recalibrate_batchnorm(model, x, batch_size=16)
    torch.testing.assert_close(bn.running_mean, first, rtol=0, atol=0)
    torch.testing.assert_close(first, feats.mean((0, 2, 3)))


def test_cnn_schedule_changed_after_the_checkpoint_resumes_exactly(small_zoo: Path) -> None:
    """The CNN recipe reads its schedule like the ABS recipes: halving the rate from epoch 2 on,
    set after one epoch at `lr_halve_every: 15`, resumes and ends bitwise equal to a run with
    `lr_halve_every: 1` from the start; changing `lr` (epoch 1's rate) is refused."""
    from robustgen_bench.errors import ZooError

    root = small_zoo / "zoo"
    f = root / "mnist" / "cnn" / "entry.yaml"
    base = f.read_text()
    f.write_text(base.replace("lr_halve_every: 15", "lr_halve_every: 1"))
    full = load_file(str(train_entry("mnist/cnn", epochs=2, root=root, checkpoint_root=small_zoo / "cf")))
    f.write_text(base)
    one = load_file(str(train_entry("mnist/cnn", epochs=1, root=root, checkpoint_root=small_zoo / "cl")))
    f.write_text(base.replace("lr: 0.001", "lr: 0.002"))
    with pytest.raises(ZooError, match="different training config"):
        train_entry("mnist/cnn", epochs=2, root=root, checkpoint_root=small_zoo / "cl")
    f.write_text(base.replace("lr_halve_every: 15", "lr_halve_every: 1"))
    late = load_file(str(train_entry("mnist/cnn", epochs=2, root=root, checkpoint_root=small_zoo / "cl")))
    assert all(torch.equal(full[k], late[k]) for k in full)
    assert not all(torch.equal(full[k], one[k]) for k in full)  # the resumed epoch trained
