"""The CNN baseline family: the E-ABS encoder's conv stack (Table 2.1) + a linear head.

The thesis compares ABS/E-ABS against CNNs with the same encoder (section 2.4): the four conv
layers of the encoder, flattened (64·3·3 = 576 on MNIST), then a linear layer to the classes.
One family serves the plain, Gaussian-noise and adversarially trained baselines; only the
training recipe differs. Deterministic and end-to-end differentiable (``gradient: exact``).
"""

from __future__ import annotations

import torch
from torch import nn

from robustgen_bench.defenses import register_family
from robustgen_bench.defenses.base import Defense
from robustgen_bench.defenses.modules import Encoder, Geometry
from robustgen_bench.zoo import ZooEntry

# The config keys this family reads (Geometry's encoder fields plus the number of classes).
CONFIG_KEYS = {"in_channels", "image_size", "enc_channels", "enc_kernels", "enc_strides",
               "enc_padding", "dropout", "num_classes"}


class CNNClassifier(Defense):
    """x (N, C, H, W) in [0, 1] → logits (N, num_classes) via conv features (N, F) and a linear head."""

    randomized = False

    def __init__(self, g: Geometry, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        enc = Encoder(g)
        # Keep only the conv stack and dropout; the encoder's μ/log σ² heads are not used here.
        self.conv = enc.conv
        self.dropout = enc.dropout
        self.head = nn.Linear(enc.feature_dim, num_classes)

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.conv(x).flatten(1)))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.predict_with_grad(x)


@register_family("cnn")
def build(config: dict, *, entry: ZooEntry | None = None) -> CNNClassifier:
    """A :class:`CNNClassifier` from an entry's ``config`` (unknown keys raise ValueError)."""
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"unknown config key {sorted(unknown)[0]!r}; expected some of {sorted(CONFIG_KEYS)}")
    cfg = dict(config)
    num_classes = int(cfg.pop("num_classes", 10))
    return CNNClassifier(Geometry.from_config(cfg), num_classes=num_classes)
