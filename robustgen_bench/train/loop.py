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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustgen_bench.errors import ZooError

CKPT_NAME = "last.pt"
BEST_NAME = "best.pt"


class EpochCheckpointer:
    """Save/restore modules + optimizers + epoch + RNG state under ``directory/last.pt``."""

    def __init__(self, directory: Path, fingerprint: str,
                 compatible: Callable[[str, int], bool] | None = None) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.compatible = compatible

    def _accepts(self, state: Mapping[str, Any]) -> bool:
        """Whether a saved state was written by this config: the same fingerprint, or one that
        ``compatible(its_fingerprint, its_epoch)`` says would have run the finished epochs the
        same (e.g. a learning-rate schedule changed only after them)."""
        found = state.get("fingerprint")
        return found == self.fingerprint or (
            self.compatible is not None and isinstance(found, str)
            and self.compatible(found, int(state["epoch"])))

    @property
    def path(self) -> Path:
        return self.directory / CKPT_NAME

    def save(self, epoch: int, modules: Mapping[str, nn.Module],
             optimizers: Mapping[str, torch.optim.Optimizer],
             metrics: Mapping[str, float] | None = None) -> None:
        """Record that ``epoch`` (0-based) is finished; written atomically (tmp file + rename)."""
        state: dict[str, Any] = {
            "epoch": epoch,
            "fingerprint": self.fingerprint,
            "rng": torch.get_rng_state(),
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        }
        self._write(CKPT_NAME, state)

    def _write(self, name: str, state: Mapping[str, Any]) -> None:
        """``torch.save`` under ``directory/name`` atomically (tmp file + rename)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / (name + ".tmp")
        torch.save(dict(state), tmp)
        tmp.replace(self.directory / name)

    def save_best(self, epoch: int, metric: str, value: float,
                  modules: Mapping[str, nn.Module]) -> None:
        """Keep the module weights of the best epoch so far under ``directory/best.pt``."""
        self._write(BEST_NAME, {"epoch": epoch, "fingerprint": self.fingerprint, "metric": metric,
                                "value": float(value),
                                "modules": {k: m.state_dict() for k, m in modules.items()}})

    def load_best(self, metric: str) -> dict[str, Any] | None:
        """The best-epoch record for ``metric`` written by this config, or None."""
        path = self.directory / BEST_NAME
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not self._accepts(state) or state.get("metric") != metric:
            return None
        return state

    def load(self, modules: Mapping[str, nn.Module],
             optimizers: Mapping[str, torch.optim.Optimizer]) -> int:
        """Restore the last checkpoint if any; returns the next epoch to run (0 when none).
        A checkpoint this config does not accept (:meth:`_accepts`) is refused."""
        if not self.path.is_file():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if not self._accepts(state):
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
    """A stable string of the training hyper-parameters (without ``epochs``, which may grow, and
    ``keep``, which selects among the epochs but does not change them)."""
    t = {k: v for k, v in train.items() if k not in ("epochs", "command", "keep")}
    return json.dumps({"train": t, "config": dict(config)}, sort_keys=True, default=str)


#: ``train`` keys that only set the learning rate of each epoch (:func:`epoch_lr`).
SCHEDULE_KEYS = ("lr", "lr_halve_every")

#: The learning rate of a (0-based) epoch under a ``train`` mapping, as a recipe reads it.
LrAt = Callable[[Mapping[str, Any], int], float]


def same_past_schedule(old_fingerprint: str, train: Mapping[str, Any], config: Mapping[str, Any],
                       finished: int, lr_at: LrAt) -> bool:
    """Whether a checkpoint written under ``old_fingerprint`` after (0-based) epoch ``finished``
    would have run the same under (``train``, ``config``): everything but :data:`SCHEDULE_KEYS`
    equal, and the learning rate of every finished epoch unchanged. So a schedule may be extended
    (e.g. the rate halved from the next epoch on) without starting over."""
    try:
        old = json.loads(old_fingerprint)
        old_train, old_config = dict(old["train"]), old["config"]
    except (ValueError, KeyError, TypeError):
        return False
    new = json.loads(config_fingerprint(train, config))

    def rest(t: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in t.items() if k not in SCHEDULE_KEYS}

    if rest(old_train) != rest(new["train"]) or old_config != new["config"]:
        return False
    return all(lr_at(old_train, e) == lr_at(train, e) for e in range(finished + 1))


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


def keep_metric(ctx: Any) -> str | None:
    """``train.keep``: ``last`` (default: the weights after the last epoch) or ``best:<metric>``
    (the epoch with the highest value of a per-epoch validation metric, e.g. ``best:val_acc``).
    Returns the metric name, or None for ``last``."""
    keep = ctx.entry.train.get("keep", "last")
    if keep == "last":
        return None
    if isinstance(keep, str) and keep.startswith("best:") and len(keep) > 5:
        return keep[5:]
    raise ZooError(f"expected 'last' or 'best:<metric>' (e.g. best:val_acc), got {keep!r}",
                   file=ctx.entry.entry_file, key="train.keep")


@dataclass(frozen=True)
class WarmStart:
    """``train.warm_start``: at the start of (0-based) ``epoch`` every optimizer forgets its state
    (a fresh Adam) and the global RNG is reseeded from (seed, epoch); ``sha256`` is that of the
    module weights at this point. A run from scratch passes through the restart, so it reproduces
    a run that skipped the first ``epoch`` epochs by loading those weights (``--warm-start FILE``):
    that is how training continues when a session's checkpoint (with its Adam state) is lost."""

    epoch: int
    sha256: str


def warm_start_of(ctx: Any) -> WarmStart | None:
    """Parse ``train.warm_start: {epoch: int >= 1, sha256: 64 hex}``; None when absent."""
    raw = ctx.entry.train.get("warm_start")
    if raw is None:
        return None
    where = {"file": ctx.entry.entry_file, "key": "train.warm_start"}
    if not isinstance(raw, Mapping) or set(raw) != {"epoch", "sha256"}:
        raise ZooError(f"expected {{epoch: <int>, sha256: <64 hex digits>}}, got {raw!r}", **where)
    epoch, sha = raw["epoch"], raw["sha256"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise ZooError(f"expected a positive epoch, got {epoch!r}", file=ctx.entry.entry_file,
                       key="train.warm_start.epoch")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha.lower())):
        raise ZooError(f"expected 64 hex digits, got {sha!r}", file=ctx.entry.entry_file,
                       key="train.warm_start.sha256")
    return WarmStart(epoch, sha.lower())


def check_warm_start(ctx: Any) -> WarmStart | None:
    """Validate ``train.warm_start`` and, when ``ctx.warm_start_file`` is set, that the entry
    records one and the file exists with its sha256; called before any data is loaded."""
    ws = warm_start_of(ctx)
    path = getattr(ctx, "warm_start_file", None)
    if path is None:
        return ws
    if ws is None:
        raise ZooError("--warm-start needs train.warm_start: {epoch, sha256} in the entry "
                       "(which epoch the file's weights end, and their sha256)",
                       file=ctx.entry.entry_file, key="train.warm_start")
    from robustgen_bench.zoo import sha256_file

    path = Path(path)
    if not path.is_file():
        raise ZooError(f"--warm-start file {path} does not exist", file=ctx.entry.entry_file,
                       key="train.warm_start")
    digest = sha256_file(path)
    if digest != ws.sha256:
        raise ZooError(f"--warm-start file {path} has sha256 {digest}, not the {ws.sha256} "
                       f"recorded for the weights after epoch {ws.epoch}",
                       file=ctx.entry.entry_file, key="train.warm_start.sha256")
    return ws


def _load_warm_start(ctx: Any, modules: Mapping[str, nn.Module]) -> None:
    """Load ``ctx.warm_start_file`` (safetensors: the single module's state dict, or
    ``<module>.<key>`` for several); ``train_entry`` checked it (:func:`check_warm_start`)
    before the recipe loaded any data."""
    from safetensors.torch import load_file

    state = load_file(str(ctx.warm_start_file))
    for name, m in modules.items():
        part = state if len(modules) == 1 else {k[len(name) + 1:]: v for k, v in state.items()
                                                 if k.startswith(name + ".")}
        m.load_state_dict(part, strict=True)


def run_epochs(ctx: Any, modules: Mapping[str, nn.Module],
               optimizers: Mapping[str, torch.optim.Optimizer],
               epoch_fn: Callable[[int], Mapping[str, float]], lr_at: LrAt | None = None) -> None:
    """Run ``epoch_fn(epoch) -> metrics`` for the epochs not yet checkpointed, saving after each.

    ``ctx`` is a :class:`robustgen_bench.train.TrainContext`. The global torch RNG is seeded with
    ``ctx.seed`` before the first epoch (a resumed run restores it from the checkpoint instead).
    With ``keep: best:<metric>`` the weights of the best epoch so far are checkpointed too
    (``best.pt``) and loaded into ``modules`` at the end (early stopping on validation data).
    With ``train.warm_start`` (:class:`WarmStart`) the optimizers restart at its epoch, and
    ``ctx.warm_start_file`` (if set and no checkpoint is further along) skips the epochs before it.
    With ``lr_at`` (how the recipe reads each epoch's rate from ``train``), a checkpoint whose
    config differs only in a schedule that leaves its finished epochs' rates unchanged resumes
    (:func:`same_past_schedule`).
    """
    metric = keep_metric(ctx)
    ws = warm_start_of(ctx)
    train, config = ctx.entry.train, ctx.entry.config
    compatible = (None if lr_at is None else
                  lambda fp, finished: same_past_schedule(fp, train, config, finished, lr_at))
    ckpt = EpochCheckpointer(ctx.checkpoint_dir, config_fingerprint(train, config), compatible)
    torch.manual_seed(ctx.seed)
    start = ckpt.load(modules, optimizers) if ctx.resume else 0
    if start > ctx.epochs:
        # last.pt holds only its own epoch: writing it would ship more epochs than asked for
        raise ZooError(f"the checkpoint {ckpt.path} has finished {start} epochs, more than the "
                       f"{ctx.epochs} asked for; pass --epochs {start} to write its weights, or "
                       f"--no-resume to train {ctx.epochs} epochs from scratch",
                       file=ctx.entry.entry_file, key="train.epochs")
    if start:
        ctx.console.print(f"[cyan]{ctx.entry.id}: resuming after epoch {start} from {ckpt.path}")
    warm = False
    if ws is not None and getattr(ctx, "warm_start_file", None) is not None:
        if start > ws.epoch:
            ctx.console.print(f"[yellow]{ctx.entry.id}: the checkpoint is past epoch {ws.epoch}; "
                              "--warm-start ignored")
        else:
            _load_warm_start(ctx, modules)
            start, warm = ws.epoch, True
            ctx.console.print(f"[cyan]{ctx.entry.id}: warm start after epoch {ws.epoch} from "
                              f"{ctx.warm_start_file} (fresh optimizer state)")
    best = ckpt.load_best(metric) if (metric and start and not warm) else None
    if metric is not None and start and best is None and not warm:
        raise ZooError(f"the checkpoint in {ckpt.directory} was written without keep: best:{metric}, "
                       "so its earlier epochs cannot be compared; train with --no-resume",
                       file=ctx.entry.entry_file, key="train.keep")
    for epoch in range(start, ctx.epochs):
        if ws is not None and epoch == ws.epoch:
            for opt in optimizers.values():
                opt.state.clear()  # a fresh Adam: its moments restart (bias correction included)
            torch.manual_seed(ctx.seed * 1_000_003 + epoch)
        metrics = dict(epoch_fn(epoch))
        if metric is not None:
            if metric not in metrics:
                raise ZooError(f"this recipe reports {sorted(metrics)} per epoch, not {metric!r}",
                               file=ctx.entry.entry_file, key="train.keep")
            if best is None or metrics[metric] > best["value"]:
                ckpt.save_best(epoch, metric, metrics[metric], modules)
                best = {"epoch": epoch, "value": metrics[metric]}
        ckpt.save(epoch, modules, optimizers, metrics)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        ctx.console.print(f"{ctx.entry.id}: epoch {epoch + 1}/{ctx.epochs} {shown}")
    if metric is not None:
        if best is None:
            raise ZooError(f"no checkpointed epoch records {metric!r}; train with --no-resume",
                           file=ctx.entry.entry_file, key="train.keep")
        kept = ckpt.load_best(metric)
        assert kept is not None and kept["epoch"] == best["epoch"]
        for k, m in modules.items():
            m.load_state_dict(kept["modules"][k], strict=True)
        ctx.console.print(f"{ctx.entry.id}: keeping epoch {best['epoch'] + 1} "
                          f"({metric}={best['value']:.4f}, train.keep)")
