"""Reusable pieces of a training loop: per-epoch checkpoints, deterministic batches, val split.

Checkpoints are ``torch.save`` dicts of tensors, numbers and strings only (loaded with
``weights_only=True``, so no pickled code): module and optimizer state dicts, the epoch just
finished, the global torch RNG state and a fingerprint of the training config. A resumed run
restores all of them and continues at the next epoch, so 2 epochs in one call and 1 + 1 resumed
give bitwise equal weights. Batch order comes from a ``torch.Generator`` seeded by (seed, epoch),
independent of everything else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustgen_bench.errors import ZooError

CKPT_NAME = "last.pt"


class EpochCheckpointer:
    """Save/restore modules + optimizers + epoch + RNG state under ``directory/last.pt``."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    @property
    def path(self) -> Path:
        return self.directory / CKPT_NAME

    def save(self, epoch: int, modules: Mapping[str, nn.Module],
             optimizers: Mapping[str, torch.optim.Optimizer],
             metrics: Mapping[str, float] | None = None) -> None:
        """Record that ``epoch`` (0-based) is finished; written atomically (tmp file + rename)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "epoch": epoch,
            "fingerprint": self.fingerprint,
            "rng": torch.get_rng_state(),
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)

    def load(self, modules: Mapping[str, nn.Module],
             optimizers: Mapping[str, torch.optim.Optimizer]) -> int:
        """Restore the last checkpoint if any; returns the next epoch to run (0 when none)."""
        if not self.path.is_file():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            raise ZooError(
                f"checkpoint {self.path} was written for a different training config; "
                "train with --no-resume to start over", key="train")
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k], strict=True)
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        torch.set_rng_state(state["rng"])
        return int(state["epoch"]) + 1


def config_fingerprint(train: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """A stable string of the training hyper-parameters (without ``epochs``, which may grow)."""
    t = {k: v for k, v in train.items() if k not in ("epochs", "command")}
    return json.dumps({"train": t, "config": dict(config)}, sort_keys=True, default=str)


def epoch_lr(base: float, epoch: int, halve_every: int | None) -> float:
    """Learning rate of ``epoch`` (0-based): ``base`` halved every ``halve_every`` epochs (a
    function of the epoch, so a resumed run follows the same schedule)."""
    return base if not halve_every else base * 0.5 ** (epoch // halve_every)


def batch_indices(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Shuffled index batches (each (<= batch_size,) int64) fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def train_val_split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int
                    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Hold out ``val_fraction`` of (x (N, ...), y (N,)) at random indices fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = int(round(len(y) * val_fraction))
    val, tr = perm[:n_val], perm[n_val:]
    return (x[tr], y[tr]), (x[val], y[val])


@torch.no_grad()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1000) -> float:
    """Fraction of (x (N, ...), y (N,)) where ``fn(x).argmax(1) == y``."""
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((fn(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(1, len(y))


def run_epochs(ctx: Any, modules: Mapping[str, nn.Module],
               optimizers: Mapping[str, torch.optim.Optimizer],
               epoch_fn: Callable[[int], Mapping[str, float]]) -> None:
    """Run ``epoch_fn(epoch) -> metrics`` for the epochs not yet checkpointed, saving after each.

    ``ctx`` is a :class:`robustgen_bench.train.TrainContext`. The global torch RNG is seeded with
    ``ctx.seed`` before the first epoch (a resumed run restores it from the checkpoint instead).
    """
    ckpt = EpochCheckpointer(ctx.checkpoint_dir, config_fingerprint(ctx.entry.train, ctx.entry.config))
    torch.manual_seed(ctx.seed)
    start = ckpt.load(modules, optimizers) if ctx.resume else 0
    if start:
        ctx.console.print(f"[cyan]{ctx.entry.id}: resuming after epoch {start} from {ckpt.path}")
    for epoch in range(start, ctx.epochs):
        metrics = dict(epoch_fn(epoch))
        ckpt.save(epoch, modules, optimizers, metrics)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        ctx.console.print(f"{ctx.entry.id}: epoch {epoch + 1}/{ctx.epochs} {shown}")
