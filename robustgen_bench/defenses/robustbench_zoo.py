"""RobustBench models as zoo entries (family ``robustbench``; optional extra ``[robustbench]``).

An entry names a model of RobustBench's registry and the sha256 of its checkpoint::

    family: robustbench
    dataset: cifar10
    config: {name: Sehwag2021Proxy_R18, dataset: cifar10, threat_model: Linf}
    weights: {file: Sehwag2021Proxy_R18.pt, sha256: <64 hex digits>}
    adaptive: {gradient: exact, randomized: false, eot: 1}

- The architecture comes from RobustBench's own registry
  (``robustbench.model_zoo.model_dicts[dataset][threat_model][name]['model']()``, or timm for the
  names RobustBench serves from timm).
- The checkpoint is read from the weights cache (``RGBENCH_WEIGHTS``) at RobustBench's offline
  layout ``<dataset>/<threat_model>/<name>.pt``, so the cache can be RobustBench's own
  ``model_dir``. Its sha256 is verified before anything is read.
- It is loaded with ``torch.load(..., weights_only=True)`` (no pickle code runs, unlike
  ``robustbench.utils.load_model``), then cleaned up as RobustBench does: the ``state_dict`` (or
  ``last``) entry of a training checkpoint is taken, the key prefixes ``module.`` and ``model.`` are
  dropped, and ``model.`` is added back when the architecture wraps its network in a ``model``
  attribute (RobustBench's ImageNet normalisation wrapper). Loading is strict.

RobustBench models take images in [0, 1] (normalisation, where any, is inside the model) and
return logits: deterministic and differentiable end to end (``gradient: exact``), so such an
entry can also be the ``base`` of a VRS entry.

With internet access, fetch a published checkpoint into the cache and print its sha256 (no
pickle load)::

    python -m robustgen_bench.defenses.robustbench_zoo download Sehwag2021Proxy_R18 \\
        --dataset cifar10 --threat-model Linf
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustgen_bench.defenses import register_family
from robustgen_bench.defenses.base import Defense
from robustgen_bench.errors import ZooError, did_you_mean

CONFIG_KEYS = ("name", "dataset", "threat_model")
DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
THREAT_MODELS = ("Linf", "L2", "corruptions")
INSTALL_HINT = ("the robustbench family needs the optional extra: pip install "
                "'robustgen-bench[robustbench]' (see docs/DEPENDENCIES.md for the install order)")


def import_robustbench():
    """Import ``robustbench`` lazily: it imports ``autoattack``, which is ``pyautoattack`` here."""
    try:
        import pyautoattack

        sys.modules.setdefault("autoattack", pyautoattack)
        import robustbench.model_zoo  # noqa: F401 - the registry
        import robustbench.model_zoo.enums  # noqa: F401
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"{INSTALL_HINT} ({e})", name=e.name) from None
    import robustbench

    return robustbench


def model_spec(config: Mapping[str, Any], *, entry_file: Path | None = None,
               entry_dataset: str | None = None) -> tuple[str, str, str]:
    """(name, dataset, threat_model) from an entry's ``config``; ZooError on a bad key or value."""
    for k in config:
        if k not in CONFIG_KEYS:
            raise ZooError(f"unknown robustbench config key.{did_you_mean(str(k), list(CONFIG_KEYS))}",
                           file=entry_file, key=f"config.{k}")
    for k in CONFIG_KEYS:
        if not isinstance(config.get(k), str) or not config.get(k):
            raise ZooError("missing required key (a string): the RobustBench model is named by "
                           "config.name, config.dataset and config.threat_model",
                           file=entry_file, key=f"config.{k}")
    name, dataset, threat = config["name"], config["dataset"], config["threat_model"]
    if dataset not in DATASETS:
        raise ZooError(f"expected one of {sorted(DATASETS)} (RobustBench's datasets)",
                       file=entry_file, key="config.dataset")
    if threat not in THREAT_MODELS:
        raise ZooError(f"expected one of {list(THREAT_MODELS)}.{did_you_mean(threat, list(THREAT_MODELS))}",
                       file=entry_file, key="config.threat_model")
    if entry_dataset is not None and entry_dataset != dataset:
        raise ZooError(f"config.dataset is {dataset!r} but the entry's dataset is {entry_dataset!r}",
                       file=entry_file, key="config.dataset")
    return name, dataset, threat


def offline_path(cache: Path, name: str, dataset: str, threat_model: str) -> Path:
    """RobustBench's offline layout under ``cache``: ``<dataset>/<threat_model>/<name>.pt``."""
    return Path(cache) / dataset / threat_model / f"{name}.pt"


def checkpoint_path(entry: Any, w: Any) -> Path:
    """Where the checkpoint ``w`` of a robustbench ``entry`` lives (called by ``ZooEntry.weight_path``)."""
    from robustgen_bench.zoo import weights_cache

    name, dataset, threat = model_spec(entry.config, entry_file=entry.entry_file)
    if w.file != f"{name}.pt":
        raise ZooError(f"expected {name}.pt (RobustBench's file name for config.name)",
                       file=entry.entry_file, key="weights.file")
    return offline_path(weights_cache(), name, dataset, threat)


def _registry_entry(name: str, dataset: str, threat: str) -> dict:
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    models = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    if name not in models:
        raise KeyError(f"RobustBench has no {dataset}/{threat} model {name!r}."
                       f"{did_you_mean(name, list(models))}")
    return models[name]


def architecture(name: str, dataset: str, threat: str) -> nn.Module:
    """The untrained architecture RobustBench's registry (or timm, as RobustBench does) builds."""
    import_robustbench()
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"
    if timm.is_model(timm_name):
        return timm.create_model(timm_name, num_classes=DATASETS[dataset], pretrained=False)
    spec = _registry_entry(name, dataset, threat)
    if isinstance(spec.get("gdrive_id"), list):
        raise ValueError(f"{name} is an ensemble of several checkpoints; only single-checkpoint "
                         "RobustBench models are supported")
    return spec["model"]()


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def clean_state_dict(checkpoint: Any, model_keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """RobustBench's key clean-up of a loaded checkpoint, as a plain ``{key: tensor}``.

    Takes ``checkpoint['state_dict']`` (or ``['last']``, the layout of some training checkpoints)
    when present, drops the prefixes ``module.`` (DataParallel) then ``model.``, and adds ``model.``
    back when every key of the architecture (``model_keys``) starts with it.
    """
    state = checkpoint
    for key in ("state_dict", "last"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("expected a state dict of tensors (or a checkpoint holding one under "
                         "'state_dict')")
    state = _strip(_strip(state, "module."), "model.")
    if model_keys and all(k.startswith("model.") for k in model_keys) and \
            not all(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    return dict(state)


def load_checkpoint(path: Path, model: nn.Module) -> None:
    """Load ``path`` into ``model``: ``torch.load(weights_only=True)``, key clean-up, strict."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = clean_state_dict(ckpt, set(model.state_dict()))
    model.load_state_dict(state, strict=True)


class RobustBenchModel(Defense):
    """A RobustBench network: x (N, C, H, W) in [0, 1] -> logits (N, K); deterministic, exact grads."""

    randomized = False

    def __init__(self, model: nn.Module, name: str, dataset: str, threat_model: str) -> None:
        super().__init__()
        self.model = model
        self.rb_name, self.rb_dataset, self.rb_threat_model = name, dataset, threat_model
        self.num_classes = DATASETS[dataset]

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def load_weight_files(self, paths: Mapping[str, Path]) -> None:
        """Load the one verified checkpoint (see :func:`load_checkpoint`)."""
        if len(paths) != 1:
            raise ZooError(f"expected exactly one checkpoint ({self.rb_name}.pt), got {len(paths)}")
        path = Path(next(iter(paths.values())))
        try:
            load_checkpoint(path, self.model)
        except pickle.UnpicklingError as e:
            raise ZooError(f"{path} holds more than tensors; refused by torch.load(weights_only="
                           f"True), nothing of it was executed: {str(e)[:300]}", key="weights") from None
        except (RuntimeError, ValueError) as e:
            raise ZooError(f"{path} does not match RobustBench's {self.rb_dataset}/"
                           f"{self.rb_threat_model} architecture of {self.rb_name}: {str(e)[:400]}",
                           key="weights") from None


@register_family("robustbench")
def build(config: dict, *, entry: Any = None) -> RobustBenchModel:
    """The entry's RobustBench architecture (weights are loaded by ``build_defense``)."""
    file = getattr(entry, "entry_file", None)
    name, dataset, threat = model_spec(config, entry_file=file,
                                       entry_dataset=getattr(entry, "dataset", None))
    try:
        arch = architecture(name, dataset, threat)
    except ModuleNotFoundError as e:
        raise ZooError(str(e), file=file, key="family") from None
    except KeyError as e:
        raise ZooError(str(e.args[0]), file=file, key="config.name") from None
    return RobustBenchModel(arch, name, dataset, threat)


def download(name: str, dataset: str, threat_model: str, cache: Path | None = None) -> Path:
    """Fetch a published checkpoint with RobustBench's downloader into the offline layout (needs
    internet; nothing is unpickled). Returns its path."""
    from robustgen_bench.zoo import weights_cache

    rb = import_robustbench()
    path = offline_path(cache or weights_cache(), name, dataset, threat_model)
    if not path.is_file():
        gid = _registry_entry(name, dataset, threat_model).get("gdrive_id")
        if not isinstance(gid, str):
            raise ValueError(f"{name} has no single checkpoint to download")
        path.parent.mkdir(parents=True, exist_ok=True)
        rb.utils.download_gdrive_new(gid, path)
    return path


def main(argv: list[str] | None = None) -> int:
    from robustgen_bench.zoo import sha256_file

    p = argparse.ArgumentParser(description="Download a RobustBench checkpoint into the rgbench "
                                "weights cache ($RGBENCH_WEIGHTS) and print its sha256.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download")
    d.add_argument("name")
    d.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS))
    d.add_argument("--threat-model", default="Linf", choices=THREAT_MODELS)
    args = p.parse_args(argv)
    path = download(args.name, args.dataset, args.threat_model)
    print(f"{path}\nsha256: {sha256_file(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
