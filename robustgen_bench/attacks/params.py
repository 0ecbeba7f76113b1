"""Declared hyper-parameters of an attack: name -> type, default, doc, checked once.

Every adapter declares its YAML parameters in one ``PARAMS`` mapping of :class:`Param`; the base
class validates a suite's ``params`` against it (unknown name, wrong type, bad choice, below the
minimum) and fills in the defaults, so no adapter parses its own configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from robustgen_bench.errors import ConfigError, did_you_mean

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list"}


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: ``kind`` is int, float, bool, str or list (of ``item``)."""

    default: Any
    kind: type
    doc: str
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    #: For ``kind=list``: the allowed item values.
    item_choices: tuple[Any, ...] | None = None

    def check(self, name: str, value: Any, owner: str) -> Any:
        """Return ``value`` normalised (int -> float for float params, list -> tuple).

        Raises :class:`ConfigError` with ``key=name`` when it does not fit.
        """
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{owner}: '{name}' may not be null; expected {_TYPE_NAMES[self.kind]}",
                              key=name)
        ok = _is_kind(value, self.kind)
        if not ok:
            raise ConfigError(
                f"{owner}: '{name}' must be {_TYPE_NAMES[self.kind]}"
                f"{' or null' if self.nullable else ''}, got {type(value).__name__} {value!r}",
                key=name)
        if self.kind is float:
            value = float(value)
        if self.kind is list:
            value = tuple(value)
            if self.item_choices is not None:
                for item in value:
                    if item not in self.item_choices:
                        raise ConfigError(
                            f"{owner}: '{name}' has unknown item {item!r}."
                            + did_you_mean(str(item), [str(c) for c in self.item_choices]),
                            key=name)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{owner}: '{name}' must be one of {list(self.choices)}, got {value!r}",
                              key=name)
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{owner}: '{name}' must be >= {self.minimum}, got {value!r}", key=name)
        return value


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:  # bool is an int subclass in Python; YAML `true` is not a step count
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def resolve_params(declared: Mapping[str, Param], given: Mapping[str, Any],
                   owner: str) -> dict[str, Any]:
    """Validate ``given`` against ``declared`` and return every parameter (defaults filled in)."""
    for name in given:
        if name not in declared:
            known = sorted(declared)
            hint = did_you_mean(name, known) if known else " This attack takes no parameters."
            raise ConfigError(f"{owner}: unknown parameter '{name}'.{hint}", key=name)
    resolved: dict[str, Any] = {}
    for name, p in declared.items():
        resolved[name] = p.check(name, given[name], owner) if name in given else p.default
    return resolved


#: Shared by every attack that reads logit values (see :mod:`robustgen_bench.attacks.losses`).
LOGIT_SCALE_PARAM = Param("standardized", str,
                          "logits the library sees: 'standardized' (per sample divided by their "
                          "std over classes: scale-free) or 'raw'",
                          choices=("standardized", "raw"))
