"""The suite's ``checks:`` section: which attack-failure checks run, on how many samples, with
which thresholds. On by default for every suite (a user expects a trustworthy number).

Suite keys (all optional)::

    checks:
      enabled: true               # false turns every check off
      skip: [transfer]            # names from CHECK_NAMES
      subsample: 20               # samples per probe (the first clean-correct ones of the subset)
      transfer_from: auto         # zoo id of the standard model for transfer; auto: <dataset>/cnn
      alpha: 0.01                 # exact McNemar tests of the black-box, transfer, convergence checks
      thresholds: {zero_gradients: 0.0, unbounded_survival: 0.05, monotone_violations: 0,
                   silent_failures: 0.1, draw_flips: 0.1}

Thresholds are the largest value that still passes (a figure above it warns; unbounded
survival above it fails). Why these defaults is in the README ("Attack-failure checks").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

#: Every check, in report order. Model-level checks report threat ``all``.
CHECK_NAMES = ("gradients", "range", "randomness", "unbounded", "monotone", "blackbox", "transfer",
               "convergence", "silent")
MODEL_LEVEL = frozenset({"gradients", "range", "randomness"})
CHECKS_KEYS = ("enabled", "skip", "subsample", "transfer_from", "alpha", "thresholds")
DEFAULT_THRESHOLDS: Mapping[str, float] = MappingProxyType({
    # AutoAttack's check_zero_gradients warns on any sample: a sample without a gradient is one
    # no gradient attack can move, so its robust verdict is untested.
    "zero_gradients": 0.0,
    # Carlini et al. 2019: an unbounded attack must succeed on every sample; one survivor in 20
    # is allowed for a finite-step attack that stops just short.
    "unbounded_survival": 0.05,
    # Robust at a larger budget but broken at a smaller one is a failed attack at the larger one.
    "monotone_violations": 0,
    # Library flags that predict rejects, and white-box minimal-norm results equal to the input, as a
    # fraction of attacked samples; budget violations warn on any.
    "silent_failures": 0.1,
    # Clean verdicts that change when the verification draws are doubled (randomized defenses).
    "draw_flips": 0.1,
})
#: Threshold keys whose value is a count (the others are fractions in [0, 1]).
COUNT_THRESHOLDS = frozenset({"monotone_violations"})


@dataclass(frozen=True)
class ChecksSpec:
    enabled: bool = True
    skip: tuple[str, ...] = ()
    subsample: int = 20
    transfer_from: str | None = "auto"
    alpha: float = 0.01
    thresholds: Mapping[str, float] = field(default_factory=lambda: DEFAULT_THRESHOLDS)

    @property
    def active(self) -> tuple[str, ...]:
        """The checks that run, in report order (none when disabled)."""
        return tuple(c for c in CHECK_NAMES if self.enabled and c not in self.skip)

    def threshold(self, name: str) -> float:
        return float(self.thresholds.get(name, DEFAULT_THRESHOLDS[name]))

    def canonical(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "skip": list(self.skip), "subsample": self.subsample,
                "transfer_from": self.transfer_from, "alpha": self.alpha,
                "thresholds": {k: self.threshold(k) for k in sorted(DEFAULT_THRESHOLDS)}}

    @classmethod
    def from_canonical(cls, data: Mapping[str, Any] | None) -> ChecksSpec:
        """Back from :meth:`canonical` (a manifest); defaults for runs that predate checks."""
        if not data:
            return cls()
        th = dict(DEFAULT_THRESHOLDS)
        th.update({k: float(v) for k, v in (data.get("thresholds") or {}).items()
                   if k in DEFAULT_THRESHOLDS})
        return cls(enabled=bool(data.get("enabled", True)), skip=tuple(data.get("skip") or ()),
                   subsample=int(data.get("subsample", cls.subsample)),
                   transfer_from=data.get("transfer_from", "auto"),
                   alpha=float(data.get("alpha", cls.alpha)),
                   thresholds=MappingProxyType(th))

    def with_subsample(self, n: int) -> ChecksSpec:
        return replace(self, subsample=n)


def parse_checks(raw: Any, v: Any, known_models: list[str]) -> ChecksSpec:
    """Validate the ``checks:`` mapping with the suite validator ``v`` (its ``fail`` names the
    file, key and line). ``true``/``false`` stand for ``{enabled: ...}``."""
    from robustgen_bench.errors import did_you_mean

    path: tuple[Any, ...] = ("checks",)
    if raw is None:
        return ChecksSpec()
    if isinstance(raw, bool):
        return ChecksSpec(enabled=raw)
    m = v.mapping(raw, path, CHECKS_KEYS)
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        raise v.fail(path + ("enabled",), f"expected true or false, got {enabled!r}")
    skip_raw = m.get("skip", []) or []
    if isinstance(skip_raw, str):
        skip_raw = [skip_raw]
    if not isinstance(skip_raw, list):
        raise v.fail(path + ("skip",), f"expected a list of check names from {list(CHECK_NAMES)}")
    for i, s in enumerate(skip_raw):
        if s not in CHECK_NAMES:
            raise v.fail(path + ("skip", i), f"unknown check {s!r}."
                         + did_you_mean(str(s), list(CHECK_NAMES)))
    subsample = v.integer(m.get("subsample", ChecksSpec.subsample), path + ("subsample",), 1)
    tf = m.get("transfer_from", "auto")
    if tf is not None and tf != "auto":
        tf = v.string(tf, path + ("transfer_from",))
        if tf not in known_models:
            raise v.fail(path + ("transfer_from",), f"unknown zoo model {tf!r}."
                         + did_you_mean(tf, known_models))
    alpha = v.number(m.get("alpha", ChecksSpec.alpha), path + ("alpha",))
    if not 0 < alpha < 1:
        raise v.fail(path + ("alpha",), f"expected a number in (0, 1), got {alpha}")
    th_raw = v.mapping(m.get("thresholds", {}) or {}, path + ("thresholds",),
                       tuple(DEFAULT_THRESHOLDS))
    th = dict(DEFAULT_THRESHOLDS)
    for k, val in th_raw.items():
        p = path + ("thresholds", k)
        if k in COUNT_THRESHOLDS:
            th[k] = float(v.integer(val, p, 0))
        else:
            x = v.number(val, p)
            if not 0 <= x <= 1:
                raise v.fail(p, f"expected a fraction in [0, 1], got {x}")
            th[k] = x
    return ChecksSpec(enabled=enabled, skip=tuple(dict.fromkeys(skip_raw)), subsample=subsample,
                      transfer_from=tf, alpha=alpha, thresholds=MappingProxyType(th))
