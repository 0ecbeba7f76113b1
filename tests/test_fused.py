"""Inference copies of the generators (BatchNorm folded, ELU via exp) equal the networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustgen_bench.defenses import get_family
from robustgen_bench.defenses.abs import ABSDefense
from robustgen_bench.defenses.fused import exp_elu, fuse_for_inference
from robustgen_bench.defenses.modules import Decoder, Geometry
from robustgen_bench.defenses.schott import SchottDecoder


def _with_random_batchnorm(module: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters (fresh ones fold to the identity)."""
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))
    return module.eval()


@pytest.mark.parametrize("make", [lambda: Decoder(Geometry()), lambda: SchottDecoder(8)],
                         ids=["table2.1", "schott2019"])
def test_fused_decoder_equals_the_decoder_values_and_gradients(make) -> None:
    torch.manual_seed(0)
    dec = _with_random_batchnorm(make())
    fused = fuse_for_inference(dec)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # folded
    assert not any(p.requires_grad for p in fused.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in dec.modules())  # source untouched
    z = torch.randn(16, dec.fc.in_features if hasattr(dec, "fc") else 8, requires_grad=True)
    ref = dec(z)
    out = fused(z)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    w = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), z)
    (g_out,) = torch.autograd.grad((out * w).sum(), z)
    torch.testing.assert_close(g_out, g_ref, atol=1e-4, rtol=1e-3)


def test_schott_decoder_elu_is_replaced() -> None:
    fused = fuse_for_inference(SchottDecoder(8).eval())
    assert "exp_elu" in fused.code and "elu(" not in fused.code.replace("exp_elu(", "")


def test_exp_elu_matches_elu_and_its_gradient() -> None:
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([0.0, -0.0, 1e-8, -1e-8])])
    x.requires_grad_(True)
    torch.testing.assert_close(exp_elu(x), F.elu(x), atol=1e-6, rtol=0)
    (g1,) = torch.autograd.grad(exp_elu(x).sum(), x)
    (g2,) = torch.autograd.grad(F.elu(x).sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=0)


def _abs_defense() -> ABSDefense:
    torch.manual_seed(0)
    d = get_family("abs")({"n_init": 64, "steps": 3})
    for dec in d.nets.decoders:
        _with_random_batchnorm(dec)
    return d.eval()


def test_defense_fused_predict_equals_reference_and_follows_weight_changes() -> None:
    d = _abs_defense()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fused = d.predict(x)
    d.fused_inference = False
    ref = d.predict(x)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-4)
    # Change one decoder's weights in place (as an optimiser step does): the copies must follow.
    with torch.no_grad():
        for p in d.nets.decoders[3].parameters():
            p.mul_(1.5)
    d.clear_cache()  # the candidate images depend on the weights too
    ref2 = d.predict(x)
    d.fused_inference = True
    fused2 = d.predict(x)
    assert (ref2 - ref).abs().max() > 1e-3  # the change matters to the logits
    torch.testing.assert_close(fused2, ref2, atol=1e-5, rtol=1e-4)


def test_training_mode_decodes_with_the_networks_themselves() -> None:
    d = _abs_defense().train()
    z = torch.randn(4, d.latent_dim)
    d._decode(0, z)
    assert d._fused is None


def test_copies_first_built_under_inference_mode_still_serve_the_latent_search() -> None:
    d = get_family("abs")({"n_init": 64, "steps": 0}).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        d.predict(x)  # steps 0: the copies are first built in here (final decode)
    built = d._fused
    assert not any(p.is_inference() for dec in built[1] for p in dec.parameters())
    d.optimise(x, steps=3)  # the Adam loop differentiates through the same copies
    assert d._fused is built


def test_the_candidate_cache_follows_the_decoding_variant(tmp_path, monkeypatch) -> None:
    """Fused and reference decoding give candidates equal only to rounding: never mix them."""
    from safetensors.torch import save_file

    monkeypatch.setenv("RGBENCH_CACHE", str(tmp_path / "cache"))
    d = _abs_defense()
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in d.nets.state_dict().items()}, str(w))
    d.load_weight_files({"weights": w})
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    d.predict(x)
    fused_file = d.cache_file
    d.fused_inference = False
    assert d._cand_images is None and d.cache_file != fused_file  # dropped, other file
    d.predict(x)
    assert sorted((tmp_path / "cache" / "abs-candidates").glob("*.safetensors")) == sorted(
        [fused_file, d.cache_file])
    d.fused_inference = True
    assert d.cache_file == fused_file
