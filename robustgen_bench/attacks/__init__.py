"""Attack adapters, registered by (library, attack name).

The runner calls::

    attack = make_attack(spec)          # spec: AttackSpec
    rows = attack(defense, adaptive, x, y, indices, clean_pred)

Adapter modules (one per backend) register their classes on import; they import the attack
library itself only when an attack runs, so listing names stays fast and an uninstalled optional
backend fails only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from robustgen_bench.attacks.base import Attack, AttackOutput
from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.errors import ConfigError, did_you_mean

__all__ = ["Attack", "AttackOutput", "AttackSpec", "UnknownAttackError", "attack_names",
           "get_attack_class", "make_attack", "register_attack"]

_ADAPTER_MODULES = (
    "robustgen_bench.attacks.foolbox_attacks",
    "robustgen_bench.attacks.autoattack_attacks",
    "robustgen_bench.attacks.torchattacks_attacks",
)
_REGISTRY: dict[tuple[str, str], type[Attack]] = {}


class UnknownAttackError(ConfigError, KeyError):
    """An unknown library or attack name (a ConfigError that is also a KeyError).

    ``args[0]`` is the bare message (without the key prefix); ``str()`` is the full one.
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message, key=key)
        self.args = (message,)

    def __str__(self) -> str:  # KeyError would quote the message
        return self._format()


def register_attack(library: str, name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: register an :class:`Attack` subclass as ``library``/``name``."""

    def deco(cls: type[Attack]) -> type[Attack]:
        key = (library, name)
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"attack {library}/{name} registered twice")
        cls.LIBRARY, cls.NAME = library, name
        _REGISTRY[key] = cls
        return cls

    return deco


def _load_all() -> None:
    for mod in _ADAPTER_MODULES:
        importlib.import_module(mod)


def attack_names() -> list[tuple[str, str]]:
    """All registered (library, attack) pairs, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get_attack_class(library: str, attack: str) -> type[Attack]:
    """The adapter class for ``library``/``attack``; :class:`UnknownAttackError` with a
    did-you-mean hint when either is unknown."""
    _load_all()
    libraries = sorted({lib for lib, _ in _REGISTRY})
    if library not in libraries:
        raise UnknownAttackError(f"unknown attack library '{library}'."
                                 + did_you_mean(library, libraries), key="library")
    names = sorted(a for lib, a in _REGISTRY if lib == library)
    if (library, attack) not in _REGISTRY:
        raise UnknownAttackError(f"unknown {library} attack '{attack}'."
                                 + did_you_mean(attack, names), key="attack")
    return _REGISTRY[(library, attack)]


def make_attack(spec: AttackSpec) -> Attack:
    """Build the attack a spec describes (params validated, defaults filled in)."""
    return get_attack_class(spec.library, spec.attack)(spec)
