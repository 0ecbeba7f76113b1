"""VRS (thesis Algorithm 5): projection, reduction to the base, randomness, EOT, zoo build."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from robustgen_bench.adaptive import Surrogate
from robustgen_bench.defenses.vrs import (
    VRS,
    VRSConfig,
    project_ball,
    random_in_ball,
)
from robustgen_bench.errors import ZooError
from robustgen_bench.threat import Threat

NORMS = [Threat.L2, Threat.LINF]



@pytest.mark.parametrize("norm", NORMS)
def test_projection_stays_in_ball_and_fixes_inner_points(norm: Threat) -> None:
    g = torch.Generator().manual_seed(1)
    for trial in range(20):
        radius = float(torch.rand((), generator=g)) * 3
        scale = 10 ** float(torch.empty(()).uniform_(-3, 2, generator=g))
        delta = torch.randn(16, 1, 28, 28, generator=g) * scale
        p = project_ball(delta, norm, radius)
        assert (norm.norm(p) <= radius * (1 + 1e-5) + 1e-7).all(), trial
        inside = norm.norm(delta) <= radius
        torch.testing.assert_close(p[inside], delta[inside])
        # A projection is idempotent.
        torch.testing.assert_close(project_ball(p, norm, radius), p)


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_is_in_ball(norm: Threat) -> None:
    torch.manual_seed(0)
    d = random_in_ball((64, 1, 28, 28), norm, 0.7, like=torch.zeros(1))
    n = norm.norm(d)
    assert (n <= 0.7 + 1e-5).all()
    assert (n > 0.1).all()  # not degenerate at the centre


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("steps", [1, 3])
def test_searched_means_stay_in_ball(tiny_defense, mnist_test_small, norm: Threat, steps: int) -> None:
    x = mnist_test_small[0][:8]
    radius = 0.3 if norm is Threat.LINF else 2.0
    vrs = VRS(tiny_defense, VRSConfig(norm=norm, radius=radius, steps=steps, step_size=radius))
    torch.manual_seed(0)
    delta = vrs.class_deltas(x)  # (K, N, C, H, W)
    assert delta.shape == (10, *x.shape)
    mu = (x.unsqueeze(0) + delta).clamp(0, 1) - x
    assert (norm.norm(mu.flatten(0, 1)) <= radius + 1e-5).all()


def test_search_raises_each_class_likelihood(tiny_defense, mnist_test_small) -> None:
    """The mean search is a *targeted* ascent (eq. 4.9 read as maximising log p(y | x + mu))."""
    x = mnist_test_small[0][:32]
    vrs = VRS(tiny_defense, VRSConfig(radius=0.1, sigma=0.0, samples=1, clip="all"))
    with torch.no_grad():
        base = torch.log_softmax(tiny_defense.predict(x), 1)
    torch.manual_seed(0)
    out = vrs.predict(x)
    assert (out - base).mean() > 0.5  # every class gains on average
    assert (out >= base - 1e-4).float().mean() > 0.9


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("sigma", [0.0, 1e-6])
def test_reduces_to_base_log_softmax(tiny_defense, mnist_test_small, norm: Threat, sigma: float) -> None:
    x = mnist_test_small[0][:16]
    vrs = VRS(tiny_defense, VRSConfig(norm=norm, radius=0.0, sigma=sigma, samples=3))
    with torch.no_grad():
        expected = torch.log_softmax(tiny_defense.predict(x), 1)
    torch.testing.assert_close(vrs.predict(x), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(vrs.surrogate_logits(x), expected, atol=1e-4, rtol=0)


def test_predict_randomized_but_seeded(tiny_defense, mnist_test_small) -> None:
    x = mnist_test_small[0][:16]
    vrs = VRS(tiny_defense, VRSConfig(radius=0.1, sigma=0.05, samples=2))
    torch.manual_seed(3)
    a = vrs.predict(x)
    b = vrs.predict(x)
    torch.manual_seed(3)
    c = vrs.predict(x)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c, atol=0, rtol=0)
    assert a.shape == (16, 10) and not a.requires_grad


def _spread(fn, x: torch.Tensor, draws: int = 8) -> float:
    """Mean per-entry variance of ``fn(x)`` over independent draws."""
    with torch.no_grad():
        outs = torch.stack([fn(x) for _ in range(draws)])
    return outs.var(dim=0).mean().item()


def test_more_samples_and_eot_reduce_variance(tiny_defense, mnist_test_small) -> None:
    x = mnist_test_small[0][:4]
    torch.manual_seed(0)
    # samples: only the noise is random (radius 0), so the variance should drop about 8x.
    one = _spread(VRS(tiny_defense, VRSConfig(radius=0.0, sigma=0.3, samples=1)).predict, x)
    many = _spread(VRS(tiny_defense, VRSConfig(radius=0.0, sigma=0.3, samples=8)).predict, x)
    assert many < one / 3
    # Surrogate EOT also re-draws the random start of the mean search (expected drop about 6x).
    vrs = VRS(tiny_defense, VRSConfig(radius=0.1, sigma=0.3, samples=1))
    single = _spread(Surrogate(vrs, 1), x)
    averaged = _spread(Surrogate(vrs, 6), x)
    assert averaged < single / 2


def test_surrogate_gradient_flows_and_linf_search_term_vanishes(tiny_defense, mnist_test_small) -> None:
    """linf: keeping the search in the graph gives the same input gradient (sign() is flat),
    which is why the shipped linf entries declare ``gradient: exact`` with the search detached."""
    x = mnist_test_small[0][:8]
    y = mnist_test_small[1][:8]
    grads = []
    for keep in (False, True):
        vrs = VRS(tiny_defense, VRSConfig(radius=0.1, samples=2, differentiate_mu=keep, clip="none"))
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(5)
        nn.functional.cross_entropy(vrs.surrogate_logits(xi), y).backward()
        grads.append(xi.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_l2_differentiated_search_runs(tiny_defense, mnist_test_small) -> None:
    x = mnist_test_small[0][:4].clone().requires_grad_(True)
    vrs = VRS(tiny_defense, VRSConfig(norm=Threat.L2, radius=1.0, samples=1, differentiate_mu=True))
    vrs.surrogate_logits(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="radiu"):
        VRSConfig.from_config({"radious": 0.1})
    with pytest.raises(ValueError, match="norm"):
        VRSConfig.from_config({"norm": "l1"})
    with pytest.raises(ValueError, match="clip"):
        VRSConfig.from_config({"clip": "sometimes"})
    assert VRSConfig.from_config({"radius": 1, "norm": "l2"}).norm is Threat.L2


# --------------------------------------------------------------------------- zoo build

_BASE_MODEL = textwrap.dedent('''
    import torch
    from torch import nn
    from robustgen_bench.defenses.base import Defense

    class Tiny(Defense):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 5, 2, 2), nn.ReLU(),
                nn.Flatten(), nn.Linear(32 * 7 * 7, 10))

        def predict(self, x):
            with torch.no_grad():
                return self.net(x)

        def predict_with_grad(self, x):
            return self.net(x)

    def build(config, *, entry):
        return Tiny()
''')


def _write_zoo(root: Path, tiny_cnn: nn.Module, vrs_config: str, base_adaptive: str = "exact") -> None:
    from safetensors.torch import save_file

    from robustgen_bench.zoo import sha256_file

    b = root / "mnist" / "tiny"
    b.mkdir(parents=True)
    (b / "model.py").write_text(_BASE_MODEL)
    save_file({k: v.contiguous() for k, v in tiny_cnn.state_dict().items()}, str(b / "w.safetensors"))
    (b / "entry.yaml").write_text(textwrap.dedent(f"""
        id: mnist/tiny
        name: Tiny
        builder: model:build
        dataset: mnist
        weights: {{file: w.safetensors, sha256: "{sha256_file(b / 'w.safetensors')}"}}
        adaptive: {{gradient: {base_adaptive}, randomized: false, eot: 1}}
    """))
    v = root / "mnist" / "vrs-tiny"
    v.mkdir(parents=True)
    (v / "entry.yaml").write_text(textwrap.dedent(f"""
        id: mnist/vrs-tiny
        name: VRS Tiny
        family: vrs
        base: mnist/tiny
        dataset: mnist
        config: {vrs_config}
        weights: []
        adaptive: {{gradient: exact, randomized: true, eot: 2}}
    """))


def test_build_from_temporary_zoo(tmp_path, tiny_cnn, mnist_test_small) -> None:
    from robustgen_bench.zoo import build_defense, get_entry

    _write_zoo(tmp_path, tiny_cnn, "{norm: linf, radius: 0.0, sigma: 0.0, samples: 1}")
    vrs = build_defense(get_entry("mnist/vrs-tiny", tmp_path))
    assert isinstance(vrs, VRS) and vrs.randomized
    x = mnist_test_small[0][:16]
    with torch.no_grad():
        expected = torch.log_softmax(tiny_cnn(x), 1)
    torch.testing.assert_close(vrs.predict(x), expected, atol=1e-4, rtol=0)


def test_build_rejects_broken_entries(tmp_path, tiny_cnn) -> None:
    from robustgen_bench.zoo import build_defense, get_entry

    _write_zoo(tmp_path / "a", tiny_cnn, "{radious: 0.1}")
    with pytest.raises(ZooError, match="radius"):
        build_defense(get_entry("mnist/vrs-tiny", tmp_path / "a"))
    _write_zoo(tmp_path / "b", tiny_cnn, "{}", base_adaptive="detached_zstar")
    with pytest.raises(ZooError, match="base"):
        build_defense(get_entry("mnist/vrs-tiny", tmp_path / "b"))
    _write_zoo(tmp_path / "c", tiny_cnn, "{}")
    (tmp_path / "c" / "mnist" / "tiny" / "w.safetensors").write_bytes(b"tampered")
    with pytest.raises(ZooError, match="sha256"):
        build_defense(get_entry("mnist/vrs-tiny", tmp_path / "c"))
    entry = tmp_path / "c" / "mnist" / "vrs-tiny" / "entry.yaml"
    entry.write_text(entry.read_text().replace("base: mnist/tiny", "base: mnist/tinny"))
    with pytest.raises(ZooError, match="Did you mean"):
        build_defense(get_entry("mnist/vrs-tiny", tmp_path / "c"))


def _shipped_mnist_vrs() -> list[str]:
    from robustgen_bench.zoo import entry_ids, get_entry

    return [e for e in entry_ids() if e.startswith("mnist/") and get_entry(e).family == "vrs"]


def test_every_shipped_base_has_a_vrs_entry() -> None:
    """Tables 4.1-4.3 shape: bare, Gaussian and both adversarially trained bases are wrapped."""
    assert {f"mnist/vrs-{b}" for b in ("cnn", "gaussian-cnn", "adv-linf", "adv-l2")} <= set(_shipped_mnist_vrs())


@pytest.mark.parametrize("entry_id", _shipped_mnist_vrs())
def test_shipped_entry_wraps_its_verified_base(entry_id: str, mnist_test_small) -> None:
    from robustgen_bench.zoo import build_defense, get_entry

    entry = get_entry(entry_id)
    base_entry = get_entry(entry.base)
    if not all(base_entry.weight_path(w).is_file() for w in base_entry.weights):
        pytest.skip(f"{entry.base} weights not present")
    vrs = build_defense(entry)
    assert isinstance(vrs, VRS) and entry.adaptive.randomized and entry.adaptive.eot >= 2
    x, y = mnist_test_small[0][:20], mnist_test_small[1][:20]
    torch.manual_seed(0)
    with torch.no_grad():
        acc = (vrs.predict(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.9  # measured 0.98-0.993 on all 10,000 test images
