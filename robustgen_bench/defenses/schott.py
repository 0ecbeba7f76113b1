"""The networks of Schott et al. (2019), "Towards the first adversarially robust neural network
model on MNIST", with state-dict keys matching the authors' published files.

- :class:`SchottEncoder` / :class:`SchottDecoder`: one VAE per class, latent 8, used by the ``abs``
  family with ``architecture: schott2019`` (see ``defenses/abs.py``).
- :class:`SchottCNN`: the authors' CNN baselines (vanilla and binary), registered as the
  ``schott-cnn`` family. Config: ``binarize`` (null or a threshold, e.g. 0.5).

Shapes: images are (N, 1, 28, 28) in [0, 1]; latents are (N, 8).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from robustgen_bench.defenses import register_family
from robustgen_bench.defenses.base import Defense


class SchottEncoder(nn.Module):
    """Conv(1→32,k5) BN ELU · Conv(32→32,k4,s2) BN ELU · Conv(32→64,k3,s2) BN ELU · Conv(64→2L,k5).

    (N, 1, 28, 28) → (μ, log σ²), each (N, L); spatial 28 → 24 → 11 → 5 → 1.
    """

    def __init__(self, latent_dim: int = 8) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.conv_0 = nn.Conv2d(1, 32, 5, 1)
        self.bn_0 = nn.BatchNorm2d(32)
        self.conv_1 = nn.Conv2d(32, 32, 4, 2)
        self.bn_1 = nn.BatchNorm2d(32)
        self.conv_2 = nn.Conv2d(32, 64, 3, 2)
        self.bn_2 = nn.BatchNorm2d(64)
        self.conv_3 = nn.Conv2d(64, 2 * latent_dim, 5, 1)

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.elu(self.bn_0(self.conv_0(x)))
        h = F.elu(self.bn_1(self.conv_1(h)))
        h = F.elu(self.bn_2(self.conv_2(h)))
        h = self.conv_3(h).flatten(1)
        return h[:, : self.latent_dim], h[:, self.latent_dim:]


class SchottDecoder(nn.Module):
    """z (N, L) → image (N, 1, 28, 28) in (0, 1); spatial 1 → 4 → 11 → 25 → 28.

    ConvT(L→32,k4) BN ELU · ConvT(32→16,k5,s2) BN ELU · ConvT(16→16,k5,s2) BN ELU · ConvT(16→1,k4),
    then a sigmoid (the authors apply it outside the module; it is part of G here).
    """

    def __init__(self, latent_dim: int = 8) -> None:
        super().__init__()
        self.conv_0 = nn.ConvTranspose2d(latent_dim, 32, 4, 1)
        self.bn_0 = nn.BatchNorm2d(32)
        self.conv_1 = nn.ConvTranspose2d(32, 16, 5, 2)
        self.bn_1 = nn.BatchNorm2d(16)
        self.conv_2 = nn.ConvTranspose2d(16, 16, 5, 2)
        self.bn_2 = nn.BatchNorm2d(16)
        self.conv_3 = nn.ConvTranspose2d(16, 1, 4, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.reshape(z.shape[0], -1, 1, 1)
        h = F.elu(self.bn_0(self.conv_0(h)))
        h = F.elu(self.bn_1(self.conv_1(h)))
        h = F.elu(self.bn_2(self.conv_2(h)))
        return torch.sigmoid(self.conv_3(h))


class SchottNets(nn.Module):
    """K per-class VAEs laid out like :class:`~robustgen_bench.defenses.modules.GenerativeNets`.

    ``encoders`` and ``decoders`` hold K modules each; ``discriminators`` is empty (plain VAEs).
    The authors' per-class files (keys ``Encoder.*``, ``Decoder.*``) load into ``encoders[k]`` and
    ``decoders[k]`` (``defenses.abs.load_class_state``).
    """

    def __init__(self, latent_dim: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoders = nn.ModuleList(SchottEncoder(latent_dim) for _ in range(num_classes))
        self.decoders = nn.ModuleList(SchottDecoder(latent_dim) for _ in range(num_classes))
        self.discriminators = nn.ModuleList()


def load_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A torch state dict saved with ``torch.save``, loaded without pickle code execution."""
    from robustgen_bench.weights import load_state_file

    return load_state_file(path, pickle_ok=True)


class SchottCNN(Defense):
    """The authors' CNN baseline: (N, 1, 28, 28) → logits (N, 10).

    Conv(1→20,k5) BN ELU · Conv(20→70,k4,s2) BN ELU · Conv(70→256,k3,s2) BN ELU · Conv(256→10,k5).
    With ``binarize`` set, inputs are thresholded first; gradients pass the threshold as the
    identity (straight-through, i.e. BPDA).
    """

    def __init__(self, binarize: float | None = None, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.binarize = binarize
        self.conv_0 = nn.Conv2d(1, 20, 5, 1)
        self.bn_0 = nn.BatchNorm2d(20)
        self.conv_1 = nn.Conv2d(20, 70, 4, 2)
        self.bn_1 = nn.BatchNorm2d(70)
        self.conv_2 = nn.Conv2d(70, 256, 3, 2)
        self.bn_2 = nn.BatchNorm2d(256)
        self.conv_3 = nn.Conv2d(256, num_classes, 5, 1)

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        if self.binarize is not None:
            x = straight_through_binarize(x, self.binarize)
        h = F.elu(self.bn_0(self.conv_0(x)))
        h = F.elu(self.bn_1(self.conv_1(h)))
        h = F.elu(self.bn_2(self.conv_2(h)))
        return self.conv_3(h).flatten(1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.predict_with_grad(x)

    def load_weight_files(self, paths: dict[str, Path]) -> None:
        """One torch state dict with the authors' keys (``conv_i``, ``bn_i``), loaded strictly."""
        if len(paths) != 1:
            raise RuntimeError(f"expected one weights file, got {len(paths)}")
        self.load_state_dict(load_torch_state(next(iter(paths.values()))), strict=True)


def straight_through_binarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``x > threshold`` as floats in the forward pass, identity in the backward pass (BPDA)."""
    b = (x > threshold).to(x.dtype)
    return x + (b - x).detach() if x.requires_grad else b


@register_family("schott-cnn")
def build_schott_cnn(config: dict, *, entry: object = None) -> SchottCNN:
    """The ``schott-cnn`` family; config keys: ``binarize`` (null or float), ``num_classes``."""
    unknown = set(config) - {"binarize", "num_classes"}
    if unknown:
        raise ValueError(f"unknown config key {sorted(unknown)[0]!r}; expected binarize, num_classes")
    b = config.get("binarize")
    return SchottCNN(binarize=None if b is None else float(b), num_classes=int(config.get("num_classes", 10)))
