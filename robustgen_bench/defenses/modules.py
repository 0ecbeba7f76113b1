"""Network modules of Table 2.1 (thesis), shared by the CNN, ABS and E-ABS families.

MNIST / Fashion-MNIST geometry (latent 10):
- Encoder: Conv(1→16,k5,s2,p2) → Conv(16→32,k5,s2,p2) → Conv(32→64,k5,s2,p2) → Conv(64→64,k4,s1,p1),
  each with BatchNorm + LeakyReLU; dropout; two parallel linear layers → μ, log σ² (latent).
  Spatial 28 → 14 → 7 → 4 → 3, so the flattened feature is 64·3·3 = 576.
- Decoder: Linear(latent→32) + dropout, reshaped to 32×1×1 → ConvT(32→32,k4,s1) → ConvT(32→32,k5,s2)
  → ConvT(32→16,k5,s2) → ConvT(16→8,k4,s1) → ConvT(8→1,k1,s1) + sigmoid; BN + ReLU on all but the last.
  Spatial 1 → 4 → 11 → 25 → 28 → 28.
- Discriminator: MLP latent → 256 → 128 → 1 (LeakyReLU), outputs a logit of D(z).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Geometry:
    """Architecture hyper-parameters (Table 2.1); defaults are the MNIST/Fashion-MNIST column."""

    in_channels: int = 1
    latent_dim: int = 10
    enc_channels: tuple[int, ...] = (16, 32, 64, 64)
    enc_kernels: tuple[int, ...] = (5, 5, 5, 4)
    enc_strides: tuple[int, ...] = (2, 2, 2, 1)
    enc_padding: tuple[int, ...] = (2, 2, 2, 1)
    dec_channels: tuple[int, ...] = (32, 32, 16, 8, 1)
    dec_kernels: tuple[int, ...] = (4, 5, 5, 4, 1)
    dec_strides: tuple[int, ...] = (1, 2, 2, 1, 1)
    disc_hidden: tuple[int, ...] = (256, 128)
    image_size: int = 28
    dropout: float = 0.2

    @classmethod
    def from_config(cls, cfg: dict) -> Geometry:
        """Geometry from an entry's ``config`` (unknown keys are ignored here, not by the zoo)."""
        fields = {f for f in cls.__dataclass_fields__}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in fields}
        return cls(**kw)


class Encoder(nn.Module):
    """(N, C, H, W) → features (N, F); ``latent(x)`` → (μ, log σ²), each (N, latent_dim)."""

    def __init__(self, g: Geometry) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = g.in_channels
        size = g.image_size
        for c, k, s, p in zip(g.enc_channels, g.enc_kernels, g.enc_strides, g.enc_padding):
            layers += [nn.Conv2d(c_in, c, k, s, p), nn.BatchNorm2d(c), nn.LeakyReLU(0.2)]
            c_in = c
            size = (size + 2 * p - k) // s + 1
        self.conv = nn.Sequential(*layers)
        self.dropout = nn.Dropout(g.dropout)
        self.feature_dim = c_in * size * size
        self.mu = nn.Linear(self.feature_dim, g.latent_dim)
        self.logvar = nn.Linear(self.feature_dim, g.latent_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(x).flatten(1))

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """z (N, latent_dim) → image (N, C, H, W) in (0, 1)."""

    def __init__(self, g: Geometry) -> None:
        super().__init__()
        first = g.dec_channels[0]
        # The FC width equals the first transposed conv's output depth (thesis, section 2.3).
        self.fc = nn.Linear(g.latent_dim, first)
        self.dropout = nn.Dropout(g.dropout)
        layers: list[nn.Module] = []
        c_in = first
        n = len(g.dec_channels)
        for i, (c, k, s) in enumerate(zip(g.dec_channels, g.dec_kernels, g.dec_strides)):
            layers.append(nn.ConvTranspose2d(c_in, c, k, s))
            if i < n - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.deconv = nn.Sequential(*layers)
        self.first = first

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.fc(z)).view(-1, self.first, 1, 1)
        return torch.sigmoid(self.deconv(h))


class Discriminator(nn.Module):
    """z (N, latent_dim) → logit of D(z) (N,); D(z) = sigmoid(logit) is P(z drawn from the prior)."""

    def __init__(self, g: Geometry) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = g.latent_dim
        for h in g.disc_hidden:
            layers += [nn.Linear(d, h), nn.LeakyReLU(0.2)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class GenerativeNets(nn.Module):
    """Container of one family instance's networks; its state-dict keys are the weights format.

    - ``encoders``: 1 module when shared (E-ABS, ablation D) or K (one VAE per class, ABS).
    - ``decoders``: K modules, one per class.
    - ``discriminators``: 0 (no AAE), 1 shared or K (ablation A without D).
    """

    def __init__(self, g: Geometry, num_classes: int = 10, shared_encoder: bool = True,
                 n_discriminators: int = 0) -> None:
        super().__init__()
        self.geometry = g
        self.num_classes = num_classes
        self.encoders = nn.ModuleList(Encoder(g) for _ in range(1 if shared_encoder else num_classes))
        self.decoders = nn.ModuleList(Decoder(g) for _ in range(num_classes))
        self.discriminators = nn.ModuleList(Discriminator(g) for _ in range(n_discriminators))

    def decode_all(self, z: torch.Tensor) -> torch.Tensor:
        """z (K, M, latent) per class → images (K, M, C, H, W); decoder k gets z[k]."""
        return torch.stack([dec(z[k]) for k, dec in enumerate(self.decoders)])
