"""ABS / E-ABS inference on tiny random networks (fast, no weights needed)."""

from __future__ import annotations

import pytest
import torch

from robustgen_bench.defenses import get_family
from robustgen_bench.defenses.abs import ABSDefense, sample_candidates
from robustgen_bench.errors import ZooError

SMALL = {"n_init": 64, "steps": 3}


def _abs(**cfg: object) -> ABSDefense:
    torch.manual_seed(0)
    return get_family("abs")({**SMALL, **cfg}).eval()


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


@pytest.mark.parametrize("aae", [False, True])
def test_candidate_search_is_the_brute_force_argmin(aae: bool) -> None:
    d = _abs(aae=aae, beta=0.5)
    x = _images(5)
    init = d.initial_latents(x)
    cands = sample_candidates(64, 10, 0.9, 22)
    for k in range(10):
        for i in range(len(x)):
            with torch.no_grad():
                rec = d.nets.decoders[k](cands).flatten(1)
                score = (x[i].flatten() - rec).pow(2).sum(-1) + 0.5 * d._prior(k, cands)
            # Compare scores, not indices: float ties between near-equal candidates are harmless.
            best = score.min()
            chosen = (cands == init.mu[k, i]).all(-1).nonzero().flatten()
            assert len(chosen) == 1
            assert score[chosen[0]] <= best + 1e-4 * best.abs()


def test_candidates_are_the_highest_density_draws() -> None:
    z = sample_candidates(100, 8, 0.9, 22)
    assert z.shape == (100, 8)
    import numpy as np

    draws = np.random.RandomState(22).multivariate_normal(np.zeros(8), np.eye(8), size=111)
    sq = (draws ** 2).sum(1)
    kept = np.sort(sq)[:100]
    assert np.allclose(np.sort((z.double() ** 2).sum(1).numpy()), kept, rtol=1e-5)


def test_projection_keeps_latents_in_the_ball() -> None:
    d = _abs(radius=0.3, steps=4)
    state = d.optimise(_images(3))
    assert state.mu.norm(dim=-1).max() <= 0.3 + 1e-5
    free = _abs(radius=None, steps=4).optimise(_images(3))
    assert free.mu.norm(dim=-1).max() > 0.3  # the bound above is not vacuous


def test_deterministic_abs_surrogate_matches_predict_and_gradient_is_analytic() -> None:
    d = _abs()
    x = _images(3).requires_grad_(True)
    logits = d.surrogate_logits(x)
    assert torch.allclose(logits.detach(), d.predict(x.detach()), atol=1e-6)
    state = d.optimise(x.detach())
    recs, _ = d.final_terms(x.detach().flatten(1), state)
    k = 4
    (g,) = torch.autograd.grad(-logits[:, k].sum(), x)
    expected = 2 * (x.detach().flatten(1) - recs[k]) / 784
    assert torch.allclose(g.flatten(1), expected, atol=1e-7)


def test_binary_variant_binarizes_and_scales() -> None:
    scales = [1.0, 0.96, 1.001, 1.06, 0.98, 0.96, 1.03, 1.0, 1.0, 2.0]
    binary = _abs(binarize=0.5, class_scales=scales)
    plain = _abs()
    plain.nets.load_state_dict(binary.nets.state_dict())
    x = _images(3)
    xb = (x > 0.5).float()
    expected = plain.predict(xb) * torch.tensor(scales)
    assert torch.allclose(binary.predict(x), expected, atol=1e-6)
    # Gradients pass the threshold as the identity (straight-through).
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(binary.surrogate_logits(xg)[:, 9].sum(), xg)
    assert g.abs().sum() > 0


def test_variational_eabs_is_randomized_but_seed_reproducible() -> None:
    torch.manual_seed(0)
    d = get_family("eabs")({"n_init": 32, "steps": 3}).eval()
    assert d.randomized and d.cfg.aae and d.cfg.shared_encoder and d.cfg.encoder_candidate
    assert len(d.nets.discriminators) == 1 and len(d.nets.encoders) == 1
    x = _images(3)
    a, b = d.predict(x), d.predict(x)
    assert not torch.equal(a, b)
    torch.manual_seed(5)
    c = d.predict(x)
    torch.manual_seed(5)
    assert torch.equal(c, d.predict(x))


def test_variational_optimises_the_log_variance() -> None:
    torch.manual_seed(0)
    d = get_family("abs")({"n_init": 32, "steps": 5, "variational": True}).eval()
    state = d.optimise(_images(2))
    assert state.logvar is not None and state.logvar.abs().max() > 0  # started at 0


def test_logvar_lr_defaults_to_lr_and_a_faster_rate_shrinks_sigma() -> None:
    x = _images(3)
    runs = {}
    for key, cfg in {"default": {}, "same": {"logvar_lr": 0.05}, "fast": {"logvar_lr": 0.5}}.items():
        torch.manual_seed(0)
        d = get_family("eabs")({"n_init": 32, "steps": 8, "lr": 0.05, **cfg}).eval()
        torch.manual_seed(1)
        runs[key] = d.optimise(x)
    # null means "the latents' rate": the very same optimisation, draw for draw
    assert torch.equal(runs["default"].mu, runs["same"].mu)
    assert torch.equal(runs["default"].logvar, runs["same"].logvar)
    # Adam moves each coordinate by about lr per step: a 10x rate moves log σ² much further
    # (on untrained networks in either direction; trained ones shrink it, see the entry README)
    assert runs["fast"].logvar.abs().mean() > 3 * runs["default"].logvar.abs().mean()


def test_ablation_switches_build_the_right_networks() -> None:
    a = get_family("abs")({"aae": True})
    assert len(a.nets.discriminators) == 10 and len(a.nets.encoders) == 10
    ad = get_family("abs")({"aae": True, "shared_encoder": True})
    assert len(ad.nets.discriminators) == 1 and len(ad.nets.encoders) == 1
    assert get_family("eabs")({"binarize": False}).cfg.binarize is None


@pytest.mark.parametrize("cfg", [{"n_iit": 5}, {"architecture": "resnet"}, {"class_scales": [1.0]},
                                 {"score_scale": "median"}, {"radius": -1}, {"logvar_lr": 0}])
def test_bad_config_raises_value_error(cfg: dict) -> None:
    with pytest.raises(ValueError):
        get_family("abs")(cfg)


def test_weights_round_trip_and_strict_loading(tmp_path) -> None:
    from safetensors.torch import save_file

    d = _abs()
    save_file({k: v.contiguous() for k, v in d.nets.state_dict().items()}, tmp_path / "w.safetensors")
    other = get_family("abs")(SMALL).eval()
    other.load_weight_files({"w.safetensors": tmp_path / "w.safetensors"})
    x = _images(2)
    assert torch.allclose(other.predict(x), d.predict(x), atol=1e-6)
    state = dict(d.nets.state_dict())
    state.pop(next(iter(state)))
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(ZooError):
        other.load_weight_files({"bad.safetensors": tmp_path / "bad.safetensors"})


def test_predict_works_under_inference_mode() -> None:
    d = _abs()
    x = _images(2)
    with torch.inference_mode():
        a = d.predict(x)
    assert torch.equal(a, d.predict(x))


def test_candidate_cache_is_kept_on_disk_keyed_by_weights(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    monkeypatch.setenv("RGBENCH_CACHE", str(tmp_path / "cache"))
    d = _abs()
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in d.nets.state_dict().items()}, str(w))
    d.load_weight_files({"weights": w})
    x = _images(3)
    logits = d.predict(x)
    files = list((tmp_path / "cache" / "abs-candidates").glob("*.safetensors"))
    assert files == [d.cache_file]
    # a second process with the same weights reads the file instead of decoding again
    e = _abs()
    e.load_weight_files({"weights": w})
    monkeypatch.setattr(e, "_build_cache", lambda: pytest.fail("decoded although cached"))
    torch.testing.assert_close(e.predict(x), logits)
    # other weights, other key; a damaged file is rebuilt, never trusted
    f = _abs(beta=0.5)
    f.load_weight_files({"weights": w})
    assert f.cache_file != d.cache_file
    d.cache_file.write_bytes(b"not a safetensors file")
    g = _abs()
    g.load_weight_files({"weights": w})
    torch.testing.assert_close(g.predict(x), logits)
    # weights changed in place: the cache file no longer applies
    g.load_state_dict(g.state_dict())
    assert g.cache_file is None
