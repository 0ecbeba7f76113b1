"""GAN-ABS inference (Algorithms 2-4) on a tiny randomly initialised generator."""

from __future__ import annotations

import pytest
import torch

from robustgen_bench.defenses.gan_abs import (
    GanAbs,
    GanGeometry,
    InferenceSettings,
    ProjectionDiscriminator,
    build,
    cyclical_lr_factor,
    direct_init,
    feature_distance,
    normalise_channels,
)

TINY = GanGeometry(latent_dim=4, gen_channels=4, embed_dim=4, enc_channels=4, feat_channels=4,
                   disc_channels=4, num_classes=3)


def tiny_defense(**kw) -> GanAbs:
    """A GanAbs with every weight drawn at random (seeded), so each block's modulation matters."""
    torch.manual_seed(0)
    d = GanAbs(TINY, InferenceSettings(**{"steps": 5, "n_init": 20, "batch_size": 4} | kw))
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return d.eval()


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_cyclical_lr_schedule_values() -> None:
    f = [cyclical_lr_factor(t, 100) for t in range(100)]
    assert f[0] == pytest.approx(0.1)
    assert f[15] == pytest.approx(0.55)  # halfway up the 30% warm-up
    assert f[30] == pytest.approx(1.0)  # peak at 30%
    assert f[60] == pytest.approx(0.505)  # halfway down the next 60%
    assert f[90] == pytest.approx(0.01) and f[99] == pytest.approx(0.01)
    assert max(f) == pytest.approx(1.0) and all(a < b for a, b in zip(f[:30], f[1:31]))
    with pytest.raises(ValueError):
        cyclical_lr_factor(0, 0)


def test_invert_applies_the_schedule_to_adam(monkeypatch, x) -> None:
    lrs: list[float] = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    d = tiny_defense(steps=10, max_lr=0.2)
    d.invert(x)
    assert lrs == pytest.approx([0.2 * cyclical_lr_factor(t, 10) for t in range(10)])


def test_direct_init_picks_the_brute_force_argmin(x) -> None:
    d = tiny_defense(steps=0)
    codes, images = d.direct_cache()
    assert codes.shape == (20, 4) and images.shape == (3, 20, 1, 28, 28)
    z0 = d.initial_codes(x)
    for k in range(3):
        with torch.no_grad():
            imgs = d.generator(codes, torch.full((len(codes),), k))  # regenerated, not the cache
        for n in range(len(x)):
            dists = [float(((x[n] - img) ** 2).sum()) for img in imgs]
            assert torch.equal(z0[n, k], codes[min(range(len(dists)), key=dists.__getitem__)])
    # The cache is built once per model, not per call.
    assert d.direct_cache()[1] is images
    assert torch.equal(d.invert(x).z, z0)  # 0 steps: z* is the initialisation


def test_direct_init_matrix_form_matches_loop() -> None:
    g = torch.Generator().manual_seed(3)
    x, codes, images = torch.rand(5, 1, 2, 2, generator=g), torch.randn(7, 3, generator=g), \
        torch.rand(2, 7, 1, 2, 2, generator=g)
    z = direct_init(x, codes, images)
    for n in range(5):
        for k in range(2):
            i = ((images[k] - x[n]) ** 2).flatten(1).sum(1).argmin()
            assert torch.equal(z[n, k], codes[i])


@pytest.mark.parametrize("initialiser", ["enc", "enc-d"])
def test_encoder_initialisers_use_the_encoder_output(initialiser: str, x) -> None:
    d = tiny_defense(initialiser=initialiser, steps=0)
    assert d.encoder is not None
    with torch.no_grad():
        e = d.encoder(x)
    z0 = d.initial_codes(x)
    assert z0.shape == (3, 3, 4)
    for k in range(3):
        assert torch.equal(z0[:, k], e)
    assert torch.equal(d.invert(x).z, z0)


def test_plus_variant_has_one_latent_copy_per_block_and_reduces_when_tied(x) -> None:
    d = tiny_defense(plus_variant=True, steps=8, lam=0.1)
    inv = d.invert(x)
    assert inv.offsets is not None
    assert inv.offsets.shape == (3, 3, d.generator.n_blocks, 4)
    # Copies are optimised independently: the blocks' offsets differ from each other.
    assert (inv.offsets[:, :, 0] - inv.offsets[:, :, 1]).abs().max() > 1e-4
    # Tied copies (all blocks get the same z) are exactly the plain generator ...
    z = torch.randn(6, 4)
    y = torch.arange(3).repeat(2)
    tied = z[:, None].expand(-1, d.generator.n_blocks, -1)
    assert torch.allclose(d.generator.forward_blocks(tied, y), d.generator(z, y))
    # ... and with zero offsets the "+" objective equals the plain one.
    plain = tiny_defense(plus_variant=False, lam=0.1)
    zz, z0 = inv.z, inv.z_init
    zero = torch.zeros_like(inv.offsets)
    assert torch.allclose(d.objective(x, zz, z0, zero), plain.objective(x, zz, z0, None))
    # Untied offsets change the images: the per-block latents really reach every block.
    moved = zero.clone()
    moved[:, :, 2] = 1.0
    assert not torch.allclose(d.objective(x, zz, z0, moved), d.objective(x, zz, z0, zero))


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_detached_zstar_gradient_is_2_residual_over_scale(scale: float, x) -> None:
    d = tiny_defense(distance_scale=scale, steps=4)
    xg = x.clone().requires_grad_(True)
    logits = d.surrogate_logits(xg)
    assert torch.allclose(logits.detach(), d.predict(x))  # deterministic: same values
    inv = d.invert(x)
    with torch.no_grad():
        rec = d._generate(inv.z, None)  # (N, K, C, H, W)
    for k in range(3):
        (g,) = torch.autograd.grad(logits[:, k].sum(), xg, retain_graph=True)
        assert torch.allclose(-g, 2 * (x - rec[:, k]) / scale, atol=1e-5)


def test_regulariser_pulls_z_towards_z_init(x) -> None:
    def drift(lam: float) -> float:
        inv = tiny_defense(lam=lam, steps=10, max_lr=0.3).invert(x)
        return float((inv.z - inv.z_init).norm(dim=-1).mean())

    free, mild, strong = drift(0.0), drift(1.0), drift(1000.0)
    assert free > mild > strong
    assert strong < 0.05 * free


def test_batched_inversion_equals_one_sample_at_a_time(x) -> None:
    d = tiny_defense(steps=6)
    together = d.invert(x).z
    alone = torch.cat([d.invert(x[i:i + 1]).z for i in range(len(x))])
    assert torch.allclose(together, alone, atol=1e-5)


def test_logits_are_negative_class_losses(x) -> None:
    d = tiny_defense(steps=3, lam=0.5)
    inv = d.invert(x)
    rec = d._generate(inv.z, None)
    expect = ((rec - x[:, None]) ** 2).flatten(2).sum(2) + 0.5 * ((inv.z - inv.z_init) ** 2).sum(-1)
    assert torch.allclose(d.predict(x), -expect, atol=1e-4)


def test_feature_distance_normalisation() -> None:
    f = torch.randn(2, 3, 5, 5)
    n = normalise_channels(f)
    assert torch.allclose(n.flatten(2).norm(dim=2), torch.full((2, 3), 5.0))
    # Invariant to a positive per-channel scale, zero for identical inputs, positive otherwise.
    assert torch.allclose(feature_distance([f], [f * 3.0]), torch.zeros(2), atol=1e-5)
    assert (feature_distance([f], [torch.randn(2, 3, 5, 5)]) > 0).all()


def test_feature_distance_enters_the_objective(x) -> None:
    d = tiny_defense(distance="feature", feature_weight=2.0, steps=2)
    assert d.feature_net is not None
    inv = d.invert(x)
    rec = d._generate(inv.z, None)
    l2 = ((rec - x[:, None]) ** 2).flatten(2).sum(2)
    fx = [f.repeat_interleave(3, 0) for f in d.feature_net.features(x)]
    feat = feature_distance(fx, d.feature_net.features(rec.flatten(0, 1))).view(3, 3)
    expect = l2 + 2.0 * feat + ((inv.z - inv.z_init) ** 2).sum(-1)
    assert torch.allclose(-d.predict(x), expect, atol=1e-4)


def test_build_rejects_bad_config() -> None:
    assert isinstance(build({"initialiser": "enc-d", "latent_dim": 4}), GanAbs)
    with pytest.raises(ValueError, match="initialiser"):
        build({"initialiser": "random"})
    with pytest.raises(ValueError, match="unknown config key"):
        build({"lamda": 1.0})


@pytest.fixture(scope="module")
def bench():
    """benchmarks/gan_abs_tradeoff.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "benchmarks" / "gan_abs_tradeoff.py"
    spec = importlib.util.spec_from_file_location("gan_abs_tradeoff", src)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tradeoff_benchmark_measures_the_true_class_reconstruction(bench, x) -> None:
    d = tiny_defense(steps=3)
    y = torch.tensor([2, 0, 1])
    r = bench.evaluate(d, x, y, None)
    inv = d.invert(x)
    with torch.no_grad():
        logits = -d.class_losses(x, inv)
        rec = d._generate(inv.z, None)
    expect = float(sum(((x[i] - rec[i, int(y[i])]) ** 2).sum() for i in range(3))) / 3
    assert r["l2_in"] == pytest.approx(expect, rel=1e-5)
    others = [float(((x[i] - rec[i, k]) ** 2).sum()) for i in range(3) for k in range(3) if k != int(y[i])]
    assert r["l2_out"] == pytest.approx(sum(others) / len(others), rel=1e-5)
    wrong = int((logits.argmax(1) != y).sum())
    assert r["error"] == pytest.approx(wrong / 3)
    assert r["error_low"] <= r["error"] <= r["error_high"] and r["error_high"] - r["error_low"] > 0.3
    assert "feat_in" not in r


def test_tradeoff_plot_is_written(bench, tmp_path) -> None:
    rows = [{"method": m, "lam": lam, "l2_in": 10.0 * lam, "error": 0.1 * lam}
            for m in ("Direct", "Direct+") for lam in (0.1, 1.0)]
    bench.plot_tradeoff(rows, tmp_path / "t.png", "title")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench.method_name("enc-d", True) == "Enc-D+"


def test_minibatch_std_channel_sees_a_lack_of_variety() -> None:
    """The extra channel is the spread across each group: 0 for identical samples, >0 otherwise."""
    from dataclasses import replace

    D = ProjectionDiscriminator(replace(TINY, disc_minibatch_std=4)).eval()
    h = torch.randn(8, 3, 5, 5)
    out = D.minibatch_std(h)
    assert out.shape == (8, 4, 5, 5)
    assert torch.equal(out[:, :3], h)
    # Group 4 over 8 samples: samples i and i + 2, i + 4, i + 6 share a group (view(4, 2, ...)).
    manual = h.view(4, 2, 3, 5, 5).std(0).mean(dim=(1, 2, 3))
    assert torch.allclose(out[:, 3, 0, 0], manual.repeat(4))
    same = D.minibatch_std(h[:1].expand(8, -1, -1, -1))
    assert torch.all(same[:, 3] == 0)
    # A batch that does not split into groups of 4 is one group; a single sample gets zeros.
    assert torch.allclose(D.minibatch_std(h[:6])[:, 3, 0, 0], h[:6].std(0).mean().expand(6))
    assert torch.all(D.minibatch_std(h[:1])[:, 3] == 0)
    # The discriminator runs on any batch size and, switched off, keeps its original layout.
    assert D(torch.rand(5, 1, 28, 28), torch.arange(5) % 3).shape == (5,)
    plain = ProjectionDiscriminator(TINY)
    assert plain.body[4].weight.shape[1] == 2 * TINY.disc_channels
    assert D.body[4].weight.shape[1] == 2 * TINY.disc_channels + 1
