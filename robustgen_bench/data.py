"""Datasets (torchvision) and deterministic evaluation subsets."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from robustgen_bench.errors import RuntimeFailure


class DatasetName(str, Enum):
    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    SVHN = "svhn"


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shape (C, H, W) and number of classes."""

    name: DatasetName
    shape: tuple[int, int, int]
    num_classes: int = 10


INFO = {
    DatasetName.MNIST: DatasetInfo(DatasetName.MNIST, (1, 28, 28)),
    DatasetName.FASHION_MNIST: DatasetInfo(DatasetName.FASHION_MNIST, (1, 28, 28)),
    DatasetName.CIFAR10: DatasetInfo(DatasetName.CIFAR10, (3, 32, 32)),
    DatasetName.SVHN: DatasetInfo(DatasetName.SVHN, (3, 32, 32)),
}


def data_root(explicit: str | Path | None = None) -> Path:
    """``--data-dir``, else ``RGBENCH_DATA``, else ``~/.cache/rgbench/data``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("RGBENCH_DATA")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "rgbench" / "data"


def load_tensors(name: DatasetName | str, split: str, root: str | Path | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as tensors: x (N, C, H, W) float32 in [0, 1], y (N,) int64."""
    from torchvision import datasets

    name = DatasetName(name)
    root = data_root(root)
    train = split == "train"
    download = not os.environ.get("RGBENCH_NO_DOWNLOAD")
    try:
        if name is DatasetName.MNIST:
            ds = datasets.MNIST(str(root), train=train, download=download and not _has(root, "MNIST"))
            x, y = ds.data.unsqueeze(1), ds.targets
        elif name is DatasetName.FASHION_MNIST:
            ds = datasets.FashionMNIST(str(root), train=train,
                                       download=download and not _has(root, "FashionMNIST"))
            x, y = ds.data.unsqueeze(1), ds.targets
        elif name is DatasetName.CIFAR10:
            ds = datasets.CIFAR10(str(root), train=train, download=download)
            x, y = torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)
        else:
            ds = datasets.SVHN(str(root), split="train" if train else "test", download=download)
            x, y = torch.from_numpy(ds.data), torch.from_numpy(ds.labels)
    except (RuntimeError, OSError) as e:
        raise RuntimeFailure(f"cannot load {name.value} ({split}) from {root}: {e}") from None
    return x.float().div(255.0).contiguous(), y.long()


def _has(root: Path, cls: str) -> bool:
    return (root / cls / "raw" / "t10k-images-idx3-ubyte").is_file()


def subset_indices(total: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices of ``range(total)``, fixed by ``seed``.

    The first ``n`` of one seeded permutation, so a smaller ``n`` (``--limit``) is a prefix of a
    larger one and its stored results are reused when the full run follows.
    """
    perm = np.random.default_rng(seed).permutation(total)
    return perm[: min(n, total)]


def indices_hash(indices: np.ndarray) -> str:
    """sha256 of the index list (int64 little-endian), so runs can prove they used the same samples."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


@dataclass(frozen=True)
class EvalSubset:
    """The evaluated samples: x (n, C, H, W), y (n,), their dataset indices and its hash."""

    x: torch.Tensor
    y: torch.Tensor
    indices: np.ndarray
    hash: str


def load_subset(name: DatasetName | str, split: str, n: int, seed: int,
                root: str | Path | None = None) -> EvalSubset:
    x, y = load_tensors(name, split, root)
    idx = subset_indices(len(y), n, seed)
    t = torch.from_numpy(idx)
    return EvalSubset(x=x[t], y=y[t], indices=idx, hash=indices_hash(idx))
