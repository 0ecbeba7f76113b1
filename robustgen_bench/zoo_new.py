"""``rgbench zoo new DATASET/NAME (--family F | --builder)``: scaffold a zoo entry to submit.

Writes ``<zoo root>/<DATASET>/<NAME>/`` with ``entry.yaml`` (every required key, commented),
``README.md`` (the sections a reviewer reads) and, for ``--builder``, ``model.py`` (a Defense
template). The entry parses as written; ``rgbench zoo check DATASET/NAME`` then names the next
missing piece (weights file, sha256, measured accuracy) until every check passes. The submission
path is ``docs/SUBMITTING.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

from robustgen_bench.errors import UserInputError, did_you_mean

PLACEHOLDER_SHA = "0" * 64
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

ENTRY_TEMPLATE = """\
# {entry_id}: scaffolded by `rgbench zoo new {entry_id} {how}`.
# Fill in every TODO, then run `rgbench zoo check {entry_id}` until all checks pass
# (docs/SUBMITTING.md is the whole submission path).
id: {entry_id}                 # must equal the folder path under model_zoo/
name: "{display}"              # TODO: the name tables and leaderboards print
{source}
dataset: {dataset}
{base}config:{config}
{weights}
# The adaptive-gradient hook attacks use (see README "Invariants" and docs/SUBMITTING.md):
#   gradient: exact          the deployed forward is differentiable end to end
#             detached_zstar an inner optimisation whose optimum z* is detached (ABS-like)
#             bpda_identity  a non-differentiable preprocessing replaced by identity (BPDA)
#             estimate       no analytic gradient: attacks must estimate it
#   randomized: true when predict draws fresh randomness on every call (then eot >= 2)
#   eot: surrogate draws averaged per gradient (1 for deterministic defenses)
adaptive:
  gradient: exact              # TODO
  randomized: false            # TODO
  eot: 1                       # TODO
# Filled by `rgbench zoo measure {entry_id} --n 10000` (deployed predict, first n test images);
# `rgbench zoo check` compares against it.
measured:
  clean_accuracy: null
  n: 0
  split: test
  command: "rgbench zoo measure {entry_id} --n 10000"
# Optional publication metadata (model cards: `rgbench export --format robustbench`; the site):
# link: https://arxiv.org/abs/...
# authors: First Author, Second Author
# venue: NeurIPS 2025
# architecture: ResNet-18
# additional_data: false
# number_forward_passes: 1
# claimed: {{robust_accuracy: 0.0}}   # the robust accuracy the authors report (a fraction)
"""

README_TEMPLATE = """\
# {display} ({dataset})

**What it is.** `{entry_id}`: {source_text}. TODO: the defense in two sentences, with the paper
it comes from. Deterministic or randomized? Which adaptive-gradient hook does `entry.yaml` declare,
and why is it the right one for an attacker (the surrogate attacks differentiate through)?

**How it was trained.** TODO: data, recipe, epochs, seed; the command that reproduces the weights
(`rgbench train {entry_id}` when a recipe exists); where the weights come from if they are
upstream (`url:` + sha256, license).

**Measured.** TODO: deployed clean accuracy from `rgbench zoo measure {entry_id} --n 10000`
(recorded in `entry.yaml`), and `rgbench zoo check {entry_id} --n 10000` passing.

**Where it differs from the paper.** TODO: budget, architecture or inference differences, and
the numbers the paper reports.
"""

MODEL_TEMPLATE = '''\
"""{display}: the builder of zoo entry {entry_id} (`builder: model:build` in entry.yaml).

Contract (robustgen_bench/defenses/base.py): images x (N, C, H, W) float in [0, 1] -> logits (N, K).
- ``predict``: the deployed defense (full inference, fresh randomness, no gradients).
- ``surrogate_logits``: one differentiable draw through the hook entry.yaml declares; the default
  calls ``predict_with_grad`` (``gradient: exact``). Defenses with an inner optimisation detach it
  here (``detached_zstar``); randomized ones draw fresh noise (set ``randomized`` and eot >= 2).

Weights: ``weights.safetensors`` beside this file holds ``build(config).state_dict()`` (loaded
strictly), e.g. ``safetensors.torch.save_file(model.state_dict(), "weights.safetensors")``.
"""

from __future__ import annotations

import torch
from torch import nn

from robustgen_bench.defenses.base import Defense


class Model(Defense):
    """TODO: replace the network; keep the methods' contracts."""

    randomized = False  # True when predict draws fresh randomness (then adaptive.eot >= 2)

    def __init__(self, num_classes: int = 10, in_channels: int = {channels}, size: int = {size}) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size * size, num_classes))

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.predict_with_grad(x)


def build(config: dict, *, entry=None) -> Model:
    """The defense from entry.yaml's ``config`` (unknown keys should raise ValueError)."""
    return Model(**config)
'''


def _family_config(family: str) -> str:
    """Commented config lines listing the keys a family reads (where the module declares them)."""
    if family == "robustbench":
        return ("\n  name: TODO                   # RobustBench model name, e.g. Sehwag2021Proxy_R18"
                "\n  dataset: cifar10             # cifar10 | cifar100 | imagenet"
                "\n  threat_model: Linf           # Linf | L2 | corruptions")
    keys: list[str] = []
    for mod_name in (f"robustgen_bench.defenses.{family}", f"robustgen_bench.defenses.{family.replace('-', '_')}"):
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError:
            continue
        if hasattr(mod, "CONFIG_KEYS"):
            keys = sorted(mod.CONFIG_KEYS)
        else:
            for v in vars(mod).values():
                if dataclasses.is_dataclass(v) and hasattr(v, "from_config"):
                    keys = [f.name for f in dataclasses.fields(v)]
                    break
        break
    if not keys:
        return " {}                   # TODO: the family's hyper-parameters (see its module)"
    return " {}                   # TODO; keys this family reads: " + ", ".join(keys)


def new_entry(entry_id: str, *, family: str | None = None, builder: bool = False,
              root: Path | None = None) -> list[Path]:
    """Create the entry folder; returns the files written. UserInputError on bad input."""
    from robustgen_bench.data import DatasetName, INFO
    from robustgen_bench.defenses import family_names
    from robustgen_bench.zoo import parse_entry, zoo_root

    if (family is None) == (not builder):
        raise UserInputError("expected exactly one of --family F or --builder", key="--family")
    parts = entry_id.split("/")
    datasets = [d.value for d in DatasetName]
    if len(parts) != 2 or not _NAME.match(parts[1]):
        raise UserInputError(f"expected DATASET/NAME with a lowercase name (letters, digits, . _ -), "
                             f"got {entry_id!r}", key="ID")
    dataset, name = parts
    if dataset not in datasets:
        raise UserInputError(f"unknown dataset {dataset!r}.{did_you_mean(dataset, datasets)}", key="ID")
    if family is not None and family not in family_names():
        raise UserInputError(f"unknown family {family!r}.{did_you_mean(family, family_names())}",
                             key="--family")
    root = root or zoo_root()
    folder = root / dataset / name
    if folder.exists():
        raise UserInputError("the entry folder already exists; choose another name", file=folder)
    display = name.replace("-", " ").replace("_", " ").title()
    channels, size = INFO[DatasetName(dataset)].shape[0], INFO[DatasetName(dataset)].shape[1]
    if builder:
        how = "--builder"
        source = "builder: model:build            # model.py in this folder, function build(config, *, entry)"
        source_text = "a builder entry (`model.py` in this folder)"
        config = " {}                   # passed to build() as keyword arguments"
    else:
        how = f"--family {family}"
        source = f"family: {family}"
        source_text = f"family `{family}`"
        config = _family_config(str(family))
    base = ("base: TODO                     # the zoo id of the classifier VRS wraps, e.g. mnist/cnn\n"
            if family == "vrs" else "")
    if family == "vrs":
        weights = "weights: []                    # VRS has no weights of its own; its base's are verified"
    elif family == "robustbench":
        weights = ("# The checkpoint is read from $RGBENCH_WEIGHTS/<dataset>/<threat_model>/<name>.pt\n"
                   "# (RobustBench's offline layout); `python -m robustgen_bench.defenses.robustbench_zoo\n"
                   "# download <name>` fetches it and prints its sha256.\n"
                   "weights:\n  file: TODO.pt                 # <config.name>.pt\n"
                   f"  sha256: \"{PLACEHOLDER_SHA}\"   # TODO: `rgbench zoo check` prints the file's sha256")
    else:
        weights = ("weights:\n  file: weights.safetensors     # the state dict, loaded strictly\n"
                   f"  sha256: \"{PLACEHOLDER_SHA}\"   # TODO: `rgbench zoo check` prints the file's sha256")
    folder.mkdir(parents=True)
    files = {
        "entry.yaml": ENTRY_TEMPLATE.format(entry_id=entry_id, how=how, display=display,
                                            source=source, dataset=dataset, base=base,
                                            config=config, weights=weights),
        "README.md": README_TEMPLATE.format(display=display, dataset=dataset, entry_id=entry_id,
                                            source_text=source_text),
    }
    if builder:
        files["model.py"] = MODEL_TEMPLATE.format(display=display, entry_id=entry_id,
                                                  channels=channels, size=size)
    written = []
    for fname, text in files.items():
        (folder / fname).write_text(text)
        written.append(folder / fname)
    parse_entry(folder / "entry.yaml", root)  # the scaffold itself must be a valid entry
    return written
