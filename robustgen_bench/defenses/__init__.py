"""Defense families, one module per family, registered by name.

A family is a callable ``build(config: dict, dataset: DatasetInfo) -> Defense``; zoo entries name
it with ``family:``. A user's own entry may instead carry ``builder: model:build`` pointing at a
``model.py`` in its folder, so adding a defense needs no library change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from robustgen_bench.errors import did_you_mean

from .base import Defense

FamilyBuilder = Callable[..., Defense]

_FAMILIES: dict[str, FamilyBuilder] = {}
# Modules that register families on import; imported lazily so `rgbench --help` stays fast.
_FAMILY_MODULES = (
    "robustgen_bench.defenses.cnn",
    "robustgen_bench.defenses.abs",
    "robustgen_bench.defenses.vrs",
    "robustgen_bench.defenses.gan_abs",
    "robustgen_bench.defenses.robustbench_zoo",  # imports robustbench only when an entry is built
)


def register_family(name: str) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Decorator registering ``build`` under ``name``."""

    def deco(fn: FamilyBuilder) -> FamilyBuilder:
        _FAMILIES[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a family module not written yet
            if e.name != mod:
                raise


def family_names() -> list[str]:
    """All registered family names."""
    _load_all()
    return sorted(_FAMILIES)


def get_family(name: str) -> FamilyBuilder:
    """The builder for ``name``; KeyError with a did-you-mean message otherwise."""
    _load_all()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}.{did_you_mean(name, list(_FAMILIES))}") from None


__all__ = ["Defense", "register_family", "get_family", "family_names", "Any"]
