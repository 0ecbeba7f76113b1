"""The authors' pretrained ABS and CNNs (Schott et al. 2019) through the zoo.

Needs the upstream weights in ``RGBENCH_WEIGHTS/abs-schott2019`` (conftest points it at
/work/shared/reference); skipped when they are absent. The candidate cache (8000 latents x 10
classes) is built once per module.
"""

from __future__ import annotations

import pytest
import torch

from robustgen_bench import zoo
from robustgen_bench.defenses.abs import ABSDefense
from robustgen_bench.errors import ZooError


def _entry(eid: str) -> zoo.ZooEntry:
    entry = zoo.get_entry(eid)
    if not all(entry.weight_path(w).is_file() for w in entry.weights):
        pytest.skip(f"upstream weights of {eid} not in {zoo.weights_cache()}")
    return entry


@pytest.fixture(scope="module")
def schott_abs() -> ABSDefense:
    d = zoo.build_defense(_entry("mnist/abs-schott2019"))
    assert isinstance(d, ABSDefense)
    d.build_cache()
    return d


@pytest.fixture(scope="module")
def predictions_20(schott_abs: ABSDefense, mnist_test_small) -> torch.Tensor:
    x, _ = mnist_test_small
    return schott_abs.predict(x[:20])


def test_entry_follows_the_authors_settings(schott_abs: ABSDefense) -> None:
    cfg = schott_abs.cfg
    assert (cfg.n_init, cfg.lr, cfg.radius, cfg.beta, cfg.score_scale) == (8000, 0.05, 5.0, 1.0, "mean")
    assert schott_abs._cand_images.shape == (10, 8000, 784)
    assert not schott_abs.randomized


def test_clean_accuracy_first_20(predictions_20: torch.Tensor, mnist_test_small) -> None:
    _, y = mnist_test_small
    correct = int((predictions_20.argmax(1) == y[:20]).sum())
    assert correct >= 18, f"{correct}/20"


@pytest.fixture(scope="module")
def surrogate_3(schott_abs: ABSDefense, mnist_test_small) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 3 images requiring grad and their surrogate logits (3, 10), graph kept."""
    x, _ = mnist_test_small
    xg = x[:3].clone().requires_grad_(True)
    return xg, schott_abs.surrogate_logits(xg)


def test_surrogate_values_equal_predict(surrogate_3, predictions_20: torch.Tensor) -> None:
    _, logits = surrogate_3
    assert torch.allclose(logits.detach(), predictions_20[:3], atol=1e-6)


def test_input_gradient_is_the_detached_zstar_formula(schott_abs: ABSDefense, surrogate_3) -> None:
    xg, logits = surrogate_3
    x = xg.detach()
    state = schott_abs.optimise(x)
    recs, _ = schott_abs.final_terms(x.flatten(1), state)
    for k in (0, 7):
        (g,) = torch.autograd.grad(-logits[:, k].sum(), xg, retain_graph=True)
        expected = 2 * (x.flatten(1) - recs[k]) / 784
        assert torch.allclose(g.flatten(1), expected, atol=1e-7)
    assert not torch.allclose(recs[0], recs[7])  # the classes' reconstructions differ


def test_projection_radius_holds_on_real_images(schott_abs: ABSDefense, mnist_test_small) -> None:
    x, _ = mnist_test_small
    # Radius 1 binds on real images (the unconstrained optimum lies further out), same code path.
    import dataclasses

    tight = dataclasses.replace(schott_abs.cfg, radius=1.0, steps=5)
    original, schott_abs.cfg = schott_abs.cfg, tight
    try:
        state = schott_abs.optimise(x[20:24])
    finally:
        schott_abs.cfg = original
    norms = state.mu.norm(dim=-1)
    assert norms.max() <= 1.0 + 1e-5 and norms.max() >= 1.0 - 1e-3


def test_missing_class_file_is_a_zoo_error(schott_abs: ABSDefense) -> None:
    entry = _entry("mnist/abs-schott2019")
    paths = {w.role: entry.weight_path(w) for w in entry.weights[:9]}
    with pytest.raises(ZooError):
        schott_abs.load_weight_files(paths)


@pytest.mark.parametrize("eid", ["mnist/vanilla-cnn-schott2019", "mnist/binary-cnn-schott2019"])
def test_schott_cnn_baselines(eid: str, mnist_test_small) -> None:
    x, y = mnist_test_small
    d = zoo.build_defense(_entry(eid))
    acc = (d.predict(x).argmax(1) == y).float().mean()
    assert acc >= 0.97
    xg = x[:2].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(d(xg)[:, 0].sum(), xg)
    assert g.abs().sum() > 0  # binary CNN: straight-through gradient


@pytest.mark.slow
def test_clean_accuracy_first_100(schott_abs: ABSDefense, mnist_test_small) -> None:
    x, y = mnist_test_small
    correct = int((schott_abs.predict(x[:100]).argmax(1) == y[:100]).sum())
    assert correct >= 97, f"{correct}/100"


@pytest.mark.slow
def test_binary_abs_first_20(mnist_test_small) -> None:
    x, y = mnist_test_small
    d = zoo.build_defense(_entry("mnist/binary-abs-schott2019"))
    assert d.cfg.binarize == 0.5 and d.class_scales[3] == pytest.approx(1.06)
    correct = int((d.predict(x[:20]).argmax(1) == y[:20]).sum())
    assert correct >= 18, f"{correct}/20"
