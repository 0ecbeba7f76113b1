"""Training contract: recipe registry, per-epoch checkpoint + resume, in-place sha256 update."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from robustgen_bench.errors import ZooError
from robustgen_bench.train import (TrainContext, get_recipe, register_recipe, train_entry,
                                   update_sha256)
from robustgen_bench.train.loop import batch_indices, run_epochs
from robustgen_bench.zoo import get_entry, sha256_file


SCORES = (0.2, 0.9, 0.5, 0.1)


@register_recipe("test_tiny")
def tiny_recipe(ctx: TrainContext) -> None:
    """A small MLP with dropout and input noise on synthetic data, so RNG state matters."""
    torch.manual_seed(ctx.seed)
    x = torch.randn(300, 20, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=float(ctx.hparam("lr", 1e-2, (int, float))))

    def epoch_fn(epoch: int) -> dict[str, float]:
        model.train()
        for idx in batch_indices(len(y), 64, ctx.seed, epoch):
            opt.zero_grad()
            xb = x[idx] + 0.1 * torch.randn_like(x[idx])
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            loss.backward()
            opt.step()
        # a scripted validation score, so that the best epoch is known to the tests (keep)
        return {"loss": float(loss.detach()), "score": SCORES[epoch % len(SCORES)]}

    run_epochs(ctx, {"model": model}, {"opt": opt}, epoch_fn)
    ctx.save_weights(model.state_dict())


ENTRY = textwrap.dedent("""\
    # tiny entry used by the training tests
    id: toy/tiny
    name: Tiny
    family: cnn
    dataset: mnist
    weights:
      file: weights.safetensors
      sha256: "{sha}"   # rewritten by training
    adaptive: {{gradient: exact, randomized: false, eot: 1}}
    train: {{recipe: {recipe}, epochs: 2, seed: 3, lr: 0.01}}
    """)


def _zoo(tmp: Path, name: str, recipe: str = "test_tiny") -> Path:
    root = tmp / name
    (root / "toy" / "tiny").mkdir(parents=True)
    (root / "toy" / "tiny" / "entry.yaml").write_text(ENTRY.format(sha="0" * 64, recipe=recipe))
    return root


def test_two_epochs_equal_one_plus_resume(tmp_path: Path) -> None:
    a, b = _zoo(tmp_path, "a"), _zoo(tmp_path, "b")
    wa = train_entry("toy/tiny", root=a, checkpoint_root=tmp_path / "ck_a")
    train_entry("toy/tiny", epochs=1, root=b, checkpoint_root=tmp_path / "ck_b")
    one = load_file(str(b / "toy/tiny/weights.safetensors"))
    wb = train_entry("toy/tiny", epochs=2, root=b, checkpoint_root=tmp_path / "ck_b")
    sa, sb = load_file(str(wa)), load_file(str(wb))
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], one[k]) for k in sa)  # the resumed epoch did train
    # without resume, the 1-epoch checkpoint is ignored and training restarts: same result again
    wc = train_entry("toy/tiny", epochs=2, resume=False, root=b, checkpoint_root=tmp_path / "ck_b")
    assert all(torch.equal(sa[k], v) for k, v in load_file(str(wc)).items())


def test_sha256_updated_in_place(tmp_path: Path) -> None:
    root = _zoo(tmp_path, "z")
    w = train_entry("toy/tiny", root=root, checkpoint_root=tmp_path / "ck")
    text = (root / "toy/tiny/entry.yaml").read_text()
    assert "# tiny entry used by the training tests" in text and "# rewritten by training" in text
    assert get_entry("toy/tiny", root).weights[0].sha256 == sha256_file(w)


@pytest.mark.parametrize("old, new", [
    ("lr: 0.01", "lr: 0.02"),  # another config: the checkpoint is stale
    # keep: best added later: the checkpointed epochs have no best record to compare with
    ("lr: 0.01}", "lr: 0.01, keep: 'best:score'}"),
])
def test_resume_refuses_a_checkpoint_it_cannot_continue(tmp_path: Path, old: str, new: str) -> None:
    root = _zoo(tmp_path, "z")
    train_entry("toy/tiny", epochs=1, root=root, checkpoint_root=tmp_path / "ck")
    f = root / "toy/tiny/entry.yaml"
    f.write_text(f.read_text().replace(old, new))
    with pytest.raises(ZooError, match="no-resume"):
        train_entry("toy/tiny", epochs=2, root=root, checkpoint_root=tmp_path / "ck")


def test_update_sha256_picks_the_named_file(tmp_path: Path) -> None:
    f = tmp_path / "entry.yaml"
    f.write_text(textwrap.dedent(f"""\
        weights:
          - {{file: a.safetensors, sha256: "{'1' * 64}", role: a}}  # first
          - file: b.safetensors
            role: b
            sha256: "{'2' * 64}"
        """))
    update_sha256(f, "b.safetensors", "f" * 64)
    update_sha256(f, "a.safetensors", "e" * 64)
    text = f.read_text()
    assert f'file: a.safetensors, sha256: "{"e" * 64}"' in text and "# first" in text
    assert f'sha256: "{"f" * 64}"' in text and "1" * 64 not in text and "2" * 64 not in text


def test_unknown_recipe(tmp_path: Path) -> None:
    root = _zoo(tmp_path, "z", recipe="test_tinny")
    with pytest.raises(ZooError) as e:
        train_entry("toy/tiny", root=root, checkpoint_root=tmp_path / "ck")
    assert e.value.key == "train.recipe" and "test_tiny" in str(e.value)
    with pytest.raises(KeyError, match="cnn_noise"):
        get_recipe("cnn_nois")


def test_train_cli_bad_input_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from robustgen_bench.cli_zoo import train_command

    monkeypatch.setenv("RGBENCH_ZOO", str(_zoo(tmp_path, "z", recipe="nope")))
    app = typer.Typer()
    app.command()(train_command)
    res = CliRunner().invoke(app, ["toy/tiny"])
    assert res.exit_code == 2 and "train.recipe" in res.output


def test_keep_best_epoch_survives_resume(tmp_path: Path) -> None:
    """keep: best:score returns the weights of epoch 2 (score 0.9) of 4, also when resumed."""
    ref = _zoo(tmp_path, "ref")
    best_w = load_file(str(train_entry("toy/tiny", epochs=2, root=ref, checkpoint_root=tmp_path / "ck_r")))
    last_w = load_file(str(train_entry("toy/tiny", epochs=4, root=ref, checkpoint_root=tmp_path / "ck_r")))
    for name, split in (("once", None), ("resumed", 1)):
        root = _zoo(tmp_path, name)
        f = root / "toy/tiny/entry.yaml"
        f.write_text(f.read_text().replace("lr: 0.01}", "lr: 0.01, keep: 'best:score'}"))
        if split:
            train_entry("toy/tiny", epochs=split, root=root, checkpoint_root=tmp_path / f"ck_{name}")
        w = load_file(str(train_entry("toy/tiny", epochs=4, root=root,
                                      checkpoint_root=tmp_path / f"ck_{name}")))
        assert all(torch.equal(w[k], best_w[k]) for k in w), name
        assert not all(torch.equal(w[k], last_w[k]) for k in w)


def test_keep_rejects_unknown_metric_and_bad_value(tmp_path: Path) -> None:
    root = _zoo(tmp_path, "z")
    f = root / "toy/tiny/entry.yaml"
    base = f.read_text()
    f.write_text(base.replace("lr: 0.01}", "lr: 0.01, keep: 'best:val_acc'}"))
    with pytest.raises(ZooError, match="not 'val_acc'") as e:
        train_entry("toy/tiny", epochs=1, root=root, checkpoint_root=tmp_path / "ck")
    assert e.value.key == "train.keep"
    f.write_text(base.replace("lr: 0.01}", "lr: 0.01, keep: first}"))
    with pytest.raises(ZooError, match="best:<metric>"):
        train_entry("toy/tiny", epochs=1, root=root, checkpoint_root=tmp_path / "ck2")


def test_checkpoint_past_the_requested_epochs_is_refused(tmp_path: Path) -> None:
    """last.pt after epoch 3 cannot give 2-epoch weights: asking for 2 is an error naming
    train.epochs (nothing written), asking for 3 writes the checkpoint's weights unchanged."""
    root = _zoo(tmp_path, "z")
    w3 = load_file(str(train_entry("toy/tiny", epochs=3, root=root, checkpoint_root=tmp_path / "ck")))
    weights = root / "toy/tiny/weights.safetensors"
    before = weights.read_bytes()
    with pytest.raises(ZooError, match="--epochs 3") as e:
        train_entry("toy/tiny", epochs=2, root=root, checkpoint_root=tmp_path / "ck")
    assert e.value.key == "train.epochs" and weights.read_bytes() == before
    again = load_file(str(train_entry("toy/tiny", epochs=3, root=root, checkpoint_root=tmp_path / "ck")))
    assert all(torch.equal(w3[k], again[k]) for k in w3)
    # --no-resume trains the 2 asked for from scratch: different weights from the 3-epoch ones
    two = load_file(str(train_entry("toy/tiny", epochs=2, resume=False, root=root,
                                    checkpoint_root=tmp_path / "ck")))
    assert not all(torch.equal(w3[k], two[k]) for k in w3)
