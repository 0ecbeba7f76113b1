"""Training recipes that produce zoo weights.

A recipe is ``fn(ctx: TrainContext) -> None`` registered with ``@register_recipe("name")``; an
entry names it in ``train.recipe``. ``train_entry(id)`` builds the context (seed, epochs, data and
checkpoint directories from the entry), runs the recipe, and the recipe hands its final state dict
to ``ctx.save_weights`` which writes ``weights.safetensors`` into the entry folder and rewrites the
entry's ``sha256`` line in place (comments and key order of entry.yaml survive).

Recipes checkpoint every epoch under ``checkpoints/<entry id>/`` (gitignored) with
:mod:`robustgen_bench.train.loop`, so an interrupted training resumes at the next epoch.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from robustgen_bench.errors import RuntimeFailure, ZooError, did_you_mean
from robustgen_bench.zoo import ZooEntry, get_entry, sha256_file

Recipe = Callable[["TrainContext"], None]

_RECIPES: dict[str, Recipe] = {}
# Modules that register recipes on import; imported lazily (like defenses/__init__.py) and
# skipped while a module is not written yet.
_RECIPE_MODULES = (
    "robustgen_bench.train.cnn_recipes",
    "robustgen_bench.train.abs_recipes",
    "robustgen_bench.train.gan_recipes",
)


def register_recipe(name: str) -> Callable[[Recipe], Recipe]:
    """Decorator registering a recipe ``fn(ctx) -> None`` under ``name``."""

    def deco(fn: Recipe) -> Recipe:
        _RECIPES[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for mod in _RECIPE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a recipe module not written yet
            if e.name != mod:
                raise


def recipe_names() -> list[str]:
    """All registered recipe names."""
    _load_all()
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; KeyError with a did-you-mean message otherwise."""
    _load_all()
    try:
        return _RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}.{did_you_mean(name, list(_RECIPES))}") from None


def checkpoints_root() -> Path:
    """``RGBENCH_CHECKPOINTS`` or ``checkpoints/`` at the repository root (gitignored)."""
    env = os.environ.get("RGBENCH_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "checkpoints"


@dataclass
class TrainContext:
    """Everything a recipe needs; recipes read hyper-parameters from ``entry.train``.

    ``epochs`` is the total number of epochs to reach (``--epochs`` overrides ``train.epochs``);
    ``resume`` says whether the recipe may continue from ``checkpoint_dir``. ``device``: where the
    recipe puts its networks and data (``load_data`` returns tensors there); weights are saved
    from the CPU either way. Checkpoints hold the CPU generator only, so a run on a GPU resumes
    with the right weights and schedule but not with bit-identical noise.
    """

    entry: ZooEntry
    data_dir: Path | None
    checkpoint_dir: Path
    seed: int
    epochs: int
    resume: bool = True
    console: Console = field(default_factory=Console)
    weights_written: list[Path] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # weights after epoch train.warm_start.epoch (sha256 checked): start there, not from scratch
    warm_start_file: Path | None = None

    def hparam(self, key: str, default: Any = None, kind: type | tuple[type, ...] | None = None) -> Any:
        """``entry.train[key]`` (or ``default``); ZooError naming ``train.<key>`` on a wrong type."""
        value = self.entry.train.get(key, default)
        if value is None and default is None:
            raise ZooError("missing training hyper-parameter", file=self.entry.entry_file,
                           key=f"train.{key}")
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int subclass; reject it where a number is wanted
        if kind is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
            raise ZooError(f"expected {kind}, got {value!r}", file=self.entry.entry_file,
                           key=f"train.{key}")
        return value

    def progress(self) -> Progress:
        """A rich progress bar bound to this context's console (use as a context manager)."""
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )

    def load_data(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The entry's dataset split: x (N, C, H, W) in [0, 1], y (N,)."""
        from robustgen_bench.data import load_tensors

        x, y = load_tensors(self.entry.dataset, split, self.data_dir)
        return x.to(self.device), y.to(self.device)

    def save_weights(self, state: Mapping[str, torch.Tensor], file: str | None = None) -> Path:
        """Write ``state`` with safetensors into the entry folder and update its sha256 in entry.yaml.

        ``file`` defaults to the entry's single weights file (or ``weights.safetensors``).
        """
        from safetensors.torch import save_file

        if file is None:
            file = self.entry.weights[0].file if len(self.entry.weights) == 1 else "weights.safetensors"
        path = self.entry.path / file
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(path))
        update_sha256(self.entry.entry_file, file, sha256_file(path))
        self.weights_written.append(path)
        return path


_SHA_RE = re.compile(r"(sha256:\s*[\"']?)([0-9a-fA-F]{64})([\"']?)")


def update_sha256(entry_file: Path, file: str, digest: str) -> None:
    """Rewrite the sha256 belonging to weights ``file`` in ``entry_file`` as text, in place.

    The sha256 nearest to the ``file: <file>`` mention is replaced (after it, else before it), so
    comments and key order survive; an entry without a weights block gets one appended.
    """
    text = entry_file.read_text()
    shas = list(_SHA_RE.finditer(text))
    mention = re.search(r"file:\s*[\"']?" + re.escape(file) + r"\b", text)
    if not shas:
        text = text.rstrip("\n") + f"\nweights: {{file: {file}, sha256: \"{digest}\"}}\n"
    else:
        if mention is None:
            target = shas[0]
        else:
            after = [m for m in shas if m.start() > mention.start()]
            before = [m for m in shas if m.start() < mention.start()]
            # the nearest sha256 after the file mention wins unless another file mention intervenes
            others = [m.start() for m in re.finditer(r"file:", text) if m.start() > mention.start()]
            if after and (not others or after[0].start() < others[0]):
                target = after[0]
            elif before:
                target = before[-1]
            else:
                target = after[0]
        text = text[:target.start(2)] + digest + text[target.end(2):]
    entry_file.write_text(text)


def train_entry(entry_id: str, *, resume: bool = True, epochs: int | None = None,
                data_dir: str | Path | None = None, root: Path | None = None,
                checkpoint_root: Path | None = None, console: Console | None = None,
                device: str | torch.device = "cpu", warm_start: Path | None = None) -> Path:
    """Train entry ``entry_id`` with its recipe; returns the written weights path.

    ``root`` is the zoo root (default ``RGBENCH_ZOO`` / ``model_zoo``); ``checkpoint_root``
    defaults to :func:`checkpoints_root`; ``device`` as for ``rgbench run --device``;
    ``warm_start``: a weights file matching ``train.warm_start`` (see ``loop.WarmStart``).
    """
    from robustgen_bench.device import resolve_device

    dev = resolve_device(device)
    entry = get_entry(entry_id, root)
    recipe_name = entry.train.get("recipe")
    if not isinstance(recipe_name, str):
        raise ZooError("expected the name of a training recipe", file=entry.entry_file,
                       key="train.recipe")
    try:
        recipe = get_recipe(recipe_name)
    except KeyError as e:
        raise ZooError(str(e.args[0]), file=entry.entry_file, key="train.recipe") from None
    n_epochs = epochs if epochs is not None else entry.train.get("epochs")
    if not isinstance(n_epochs, int) or isinstance(n_epochs, bool) or n_epochs < 1:
        raise ZooError(f"expected a positive number of epochs, got {n_epochs!r}",
                       file=entry.entry_file, key="train.epochs")
    seed = entry.train.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ZooError(f"expected an integer seed, got {seed!r}", file=entry.entry_file, key="train.seed")
    ctx = TrainContext(
        entry=entry, data_dir=Path(data_dir) if data_dir else None,
        checkpoint_dir=(checkpoint_root or checkpoints_root()) / entry.id, seed=seed,
        epochs=n_epochs, resume=resume, console=console or Console(), device=dev,
        warm_start_file=Path(warm_start) if warm_start is not None else None,
    )
    from robustgen_bench.train.loop import check_warm_start

    check_warm_start(ctx)  # a wrong --warm-start file fails before any data is loaded
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    recipe(ctx)
    if not ctx.weights_written:
        raise RuntimeFailure(f"recipe {recipe_name!r} finished without calling ctx.save_weights")
    return ctx.weights_written[-1]


__all__ = ["TrainContext", "register_recipe", "get_recipe", "recipe_names", "train_entry",
           "update_sha256", "checkpoints_root"]
