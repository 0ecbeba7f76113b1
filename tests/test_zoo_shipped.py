"""The shipped CNN baselines: family behaviour and `zoo check` on the trained weights."""

from __future__ import annotations

import pytest
import torch

from robustgen_bench.defenses import get_family
from robustgen_bench.zoo import entry_ids, get_entry
from robustgen_bench.zoo_check import check_entries

CNN_ENTRIES = [f"{ds}/{name}" for ds in ("mnist", "fashion-mnist")
               for name in ("cnn", "adv-linf", "adv-l2", "gaussian-cnn")]


def test_cnn_family_is_deterministic_and_exactly_differentiable(mnist_test_small) -> None:
    torch.manual_seed(0)
    model = get_family("cnn")({}, entry=None).eval()
    assert model.conv[-3].out_channels * 3 * 3 == model.head.in_features == 576  # Table 2.1
    x = mnist_test_small[0][:4].clone().requires_grad_(True)
    logits = model.surrogate_logits(x)
    assert logits.shape == (4, 10)
    assert torch.equal(logits.detach(), model.predict(x))
    (g,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown config key"):
        get_family("cnn")({"widht": 3}, entry=None)


@pytest.mark.parametrize("entry_id", CNN_ENTRIES)
def test_shipped_entry_passes_check(entry_id: str) -> None:
    assert entry_id in entry_ids()
    entry = get_entry(entry_id)
    if set(entry.weights[0].sha256) == {"0"}:
        pytest.skip(f"{entry_id} not trained yet")
    report = check_entries([entry_id], n=200)
    assert report.ok, [r for r in report.results if not r.ok]


GENERATIVE_ENTRIES = [f"{ds}/{name}" for ds in ("mnist", "fashion-mnist") for name in ("abs", "eabs")]
# the thesis's Table 2.6 ablations of E-ABS (MNIST only)
GENERATIVE_ENTRIES += [f"mnist/{name}-abs" for name in ("a", "d", "v", "ad", "av", "dv")]


@pytest.mark.slow
@pytest.mark.parametrize("entry_id", GENERATIVE_ENTRIES)
def test_shipped_generative_entry_passes_check(entry_id: str) -> None:
    """ABS-family inference is ~0.1-0.2 s per image per core, hence slow and a small n."""
    report = check_entries([entry_id], n=100)
    assert report.ok, [r for r in report.results if not r.ok]


@pytest.mark.parametrize("entry_id", entry_ids())
def test_shipped_weights_files_match_their_sha256(entry_id: str) -> None:
    """Files committed with the repository (not downloaded) are present and hash as declared.

    Catches an entry that shares another entry's file (e.g. a "+" variant naming
    ``../gan-abs/weights.safetensors``) after that file was retrained.
    """
    from robustgen_bench.zoo import sha256_file

    entry = get_entry(entry_id)
    for w in entry.weights:
        if w.url is not None:
            continue
        path = entry.weight_path(w)
        assert path.is_file(), f"{entry_id}: {path} missing"
        assert sha256_file(path) == w.sha256, f"{entry_id}: {w.file} does not hash as declared"
