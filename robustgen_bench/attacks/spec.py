"""The typed description of one attack cell, produced by the suite loader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from robustgen_bench.adaptive import WarmStart
from robustgen_bench.threat import Threat


@dataclass(frozen=True)
class AttackSpec:
    """One attack at one budget.

    ``id`` is the suite's name for it (e.g. ``pgd-l2``), ``library``/``attack`` select the adapter
    (e.g. ``foolbox``/``L2PGD``), ``params`` are the adapter's validated hyper-parameters.
    """

    id: str
    library: str
    attack: str
    threat: Threat
    epsilon: float
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: How many ``predict`` draws re-decide success for a randomized defense.
    verify_draws: int = 5
    seed: int = 0
    #: The warm-started surrogate (None: the full inference at every attack step).
    surrogate: WarmStart | None = None
    #: EOT draws of the surrogate for this attack (None: the zoo entry's ``adaptive.eot``).
    eot: int | None = None
    #: For one point of a sweep (a suite key given as a list): the suite's attack id and the
    #: swept keys with this cell's values, in suite order; ``id`` is ``<of>@k=v,...``.
    sweep_of: str | None = None
    sweep: tuple[tuple[str, Any], ...] = ()

    def __reduce__(self) -> tuple:
        # Picklable for worker processes (a mappingproxy is not): params travel as a dict.
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["params"] = dict(self.params)
        return (_rebuild_spec, (state,))

    def canonical(self) -> dict[str, Any]:
        """JSON-able canonical form; its hash keys the cell in the store.

        Holds the adapter's ``REVISION`` when it is not 0, so a behaviour change of an adapter
        gives its cells new keys (and leaves every other cell's key as it was).
        """
        out: dict[str, Any] = {
            "id": self.id, "library": self.library, "attack": self.attack,
            "threat": self.threat.value, "epsilon": float(self.epsilon),
            "params": {k: self.params[k] for k in sorted(self.params)},
            "verify_draws": self.verify_draws, "seed": self.seed,
        }
        if self.surrogate is not None:
            out["surrogate"] = self.surrogate.canonical()
        if self.eot is not None:
            out["eot"] = self.eot
        if self.sweep_of is not None:
            out["sweep"] = {"of": self.sweep_of, "values": [[k, v] for k, v in self.sweep]}
        revision = _revision(self.library, self.attack)
        if revision:
            out["revision"] = revision
        return out


def _rebuild_spec(state: dict[str, Any]) -> AttackSpec:
    return AttackSpec(**{**state, "params": MappingProxyType(state["params"])})


def _revision(library: str, attack: str) -> int:
    from robustgen_bench.attacks import UnknownAttackError, get_attack_class

    try:
        return get_attack_class(library, attack).REVISION
    except UnknownAttackError:  # specs of test doubles and removed adapters
        return 0
