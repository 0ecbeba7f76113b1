"""The attack base class: every invariant of an honest evaluation, once, for every backend.

An adapter implements one hook, :meth:`Attack._run` (library attack on a batch of the surrogate
model -> candidate adversarial inputs). :meth:`Attack.__call__` is final (foolbox style) and owns
what no library is trusted with:

* samples misclassified clean are not attacked (distance 0, ``adv_correct`` False);
* every candidate must be finite, inside [0, 1] and (bounded attacks) within ``epsilon + 1e-6`` of
  its input in the threat's norm; a candidate that is not counts as a failed attack, the
  violation is logged and stored in :attr:`ResultRow.violation`;
* success is re-decided by the defense's own ``predict`` (majority of ``verify_draws`` draws for a
  randomized defense), never by the library's flag;
* minimal-norm attacks keep the smallest verified adversarial distance; robustness at epsilon is
  "no verified adversarial with distance <= epsilon";
* restarts (param ``restarts``): a sample is robust only if it survives every restart; each restart
  attacks only the samples not yet broken, and the first verified success is kept;
* a deterministic defense is attacked through one surrogate draw whatever ``eot`` asks (its
  draws are identical);
* randomness comes from ``spec.seed`` (and the batch's sample indices) inside a forked RNG.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, final

import torch
from torch import nn

from robustgen_bench.adaptive import AdaptiveSpec, Surrogate
from robustgen_bench.attacks.losses import StandardizedLogits
from robustgen_bench.attacks.params import Param, resolve_params
from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.attacks.verification import majority_vote, predict_draws
from robustgen_bench.defenses.base import Defense
from robustgen_bench.device import fork_rng
from robustgen_bench.errors import ConfigError
from robustgen_bench.store import ResultRow
from robustgen_bench.threat import Threat

LOG = logging.getLogger(__name__)

#: Slack on the epsilon check, for float32 round-off in the libraries' projections.
NORM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class AttackOutput:
    """What an adapter's ``_run`` returns for a batch of n samples.

    ``x_adv`` (n, C, H, W): the attack's best candidate per sample (the input itself where it found
    nothing). ``flagged`` (n,) bool: the library's own success flag, only logged when ``predict``
    disagrees. ``fallbacks``: further candidates (each (n, C, H, W)), in order of preference,
    verified only for samples whose earlier candidates failed verification.
    """

    x_adv: torch.Tensor
    flagged: torch.Tensor | None = None
    fallbacks: tuple[torch.Tensor, ...] = ()


@dataclass
class _SampleState:
    """Running outcome of one attacked sample across restarts and candidates."""

    success: bool = False
    distance: float | None = None
    pred: int | None = None
    draws: tuple[int, ...] = ()
    violation: str | None = None
    #: The verified adversarial input (C, H, W), kept for example grids.
    x_adv: torch.Tensor | None = None


class Attack(ABC):
    """An attack at one budget, built from an :class:`AttackSpec`.

    Subclasses set ``LIBRARY``, ``NAME``, ``PARAMS`` (declared once: type, default, doc),
    ``MINIMAL_NORM``, ``THREATS`` and implement :meth:`_run`.
    """

    LIBRARY: ClassVar[str] = ""
    NAME: ClassVar[str] = ""
    PARAMS: ClassVar[Mapping[str, Param]] = MappingProxyType({})
    #: True for attacks that minimise the perturbation (DDN, CW, DeepFool, Boundary, noise search).
    MINIMAL_NORM: ClassVar[bool] = False
    #: True where every round attacks a larger budget than the one before (a search over
    #: budgets): a sample that ``predict`` confirmed adversarial leaves the later rounds, which
    #: could only find a farther example. Minimal-norm attacks re-attack every sample otherwise.
    ROUNDS_GROW_BUDGET: ClassVar[bool] = False
    THREATS: ClassVar[frozenset[Threat]] = frozenset(Threat)
    #: Bumped when an adapter's behaviour changes under the same params, so that its cells get
    #: new keys and rows of the old behaviour never mix with the new (0: not recorded).
    REVISION: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:  # the invariants live in one place only
            raise TypeError(f"{cls.__name__} must not override Attack.__call__; implement _run")

    def __init__(self, spec: AttackSpec) -> None:
        self.spec = spec
        self.round = 0
        self.params: Mapping[str, Any] = MappingProxyType(
            resolve_params(self.PARAMS, spec.params, self._owner()))
        if spec.threat not in self.THREATS:
            allowed = ", ".join(sorted(t.value for t in self.THREATS))
            raise ConfigError(f"{self._owner()} supports threat {allowed}, not "
                              f"'{spec.threat.value}'", key="threat")
        if not spec.epsilon >= 0:
            raise ConfigError(f"{self._owner()}: epsilon must be >= 0, got {spec.epsilon!r}",
                              key="epsilon")
        self._check_params()

    # ----------------------------------------------------------------- configuration
    @classmethod
    def _owner(cls) -> str:
        return f"{cls.LIBRARY}/{cls.NAME}"

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` (``key`` = the parameter) for unknown or ill-typed params."""
        resolve_params(cls.PARAMS, params, cls._owner())

    @classmethod
    def bounded_params(cls, epsilon: float) -> dict[str, Any] | None:
        """Parameter changes that turn this minimal-norm attack into one bounded attack at
        ``epsilon`` (for probes that re-run an attack at a cell's budget, e.g. the convergence
        check); None where there is no such form (the default)."""
        return None

    def _check_params(self) -> None:
        """Cross-parameter checks of a subclass (raise ConfigError); none by default."""

    @property
    def threat(self) -> Threat:
        return self.spec.threat

    @property
    def epsilon(self) -> float:
        return float(self.spec.epsilon)

    def rounds(self) -> int:
        """How often :meth:`_run` is called per batch (the ``restarts`` param where declared).

        During a call, ``self.round`` holds the current round (0-based), set by ``__call__``.
        """
        return int(self.params.get("restarts", 1))

    def __repr__(self) -> str:
        parts = [f"threat={self.threat.value}", f"epsilon={self.epsilon!r}"]
        parts += [f"{k}={_fmt(self.params[k])}" for k in sorted(self.params)]
        parts += [f"verify_draws={self.spec.verify_draws}", f"seed={self.spec.seed}"]
        if self.spec.eot is not None:
            parts.append(f"eot={self.spec.eot}")
        return f"{self._owner()}({', '.join(parts)})"

    # ----------------------------------------------------------------- the one hook
    @abstractmethod
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        """Attack ``model`` (the EOT surrogate: (n, C, H, W) -> logits (n, K)) on x, labels y (n,).

        Randomness must come from torch's global RNG (seeded by the caller) or :meth:`next_seed`.
        """

    def next_seed(self) -> int:
        """A seed for libraries that take one, drawn from the (seeded, forked) torch RNG."""
        return int(torch.randint(0, 2**31 - 1, ()).item())

    # ----------------------------------------------------------------- the invariants
    @final
    def __call__(self, defense: Defense, adaptive: AdaptiveSpec, x: torch.Tensor, y: torch.Tensor,
                 indices: Sequence[int], clean_pred: torch.Tensor) -> list[ResultRow]:
        """Attack a batch and return one :class:`ResultRow` per sample, in order.

        x (N, C, H, W) in [0, 1]; y, clean_pred (N,) int (clean_pred from ``defense.predict``);
        indices: the N dataset indices.
        """
        n = x.shape[0]
        if not (y.shape == (n,) and clean_pred.shape == (n,) and len(indices) == n):
            raise ValueError(f"batch shapes disagree: x {tuple(x.shape)}, y {tuple(y.shape)}, "
                             f"clean_pred {tuple(clean_pred.shape)}, {len(indices)} indices")
        if n and (x.min() < 0 or x.max() > 1):
            raise ValueError("inputs must lie in [0, 1]")
        y_cpu, cp_cpu = y.long().cpu(), clean_pred.long().cpu()
        attacked = torch.nonzero(cp_cpu == y_cpu).flatten()
        states = [_SampleState() for _ in range(n)]
        randomized = bool(adaptive.randomized or getattr(defense, "randomized", False))
        n_draws = max(1, int(self.spec.verify_draws)) if randomized else 1
        #: Per-batch counters of silent library failures (stored per cell by the runner):
        #: ``flagged_rejected`` candidates the library flagged successful that were not verified
        #: adversarial (unmoved, over budget or rejected by ``predict``); ``unperturbed``
        #: minimal-norm results equal to the input.
        self.last_counters = {"flagged_rejected": 0, "unperturbed": 0}

        if len(attacked):
            # A deterministic defense gives identical draws, whose mean is one draw: taking one
            # keeps an EOT sweep over such a model (Table 2.7 beside ABS) from paying k times.
            eot = (adaptive.eot if self.spec.eot is None else self.spec.eot) if randomized else 1
            surrogate = Surrogate(defense, eot, warm=self.spec.surrogate)
            surrogate.training = defense.training  # libraries that toggle modes restore this one
            model: nn.Module = surrogate
            if self.params.get("logit_scale") == "standardized":
                model = StandardizedLogits(model)
            with fork_rng(x.device), _attack_mode(defense):
                torch.manual_seed(_batch_seed(self.spec.seed, indices))
                for r in range(self.rounds()):
                    self.round = r
                    every = self.MINIMAL_NORM and not self.ROUNDS_GROW_BUDGET
                    todo = attacked if every else torch.tensor(
                        [int(i) for i in attacked if not states[int(i)].success], dtype=torch.long)
                    if not len(todo):
                        break
                    xs, ys = x[todo].detach(), y[todo].long()
                    surrogate.reset()  # a new round never inherits the last one's solutions
                    out = self._run(model, xs, ys)
                    self._settle(defense, xs, ys, todo, out, n_draws, states)

        # The verified adversarial per sample (the input itself where none): (N, C, H, W).
        self.last_x_adv = torch.stack([states[i].x_adv if states[i].x_adv is not None
                                       else x[i].detach().cpu() for i in range(n)]) if n else x.cpu()
        return [self._row(int(indices[i]), int(y_cpu[i]), int(cp_cpu[i]), states[i])
                for i in range(n)]

    def _settle(self, defense: Defense, xs: torch.Tensor, ys: torch.Tensor, todo: torch.Tensor,
                out: AttackOutput, n_draws: int, states: list[_SampleState]) -> None:
        """Check and verify the candidates of one round; update ``states`` in place."""
        candidates = (out.x_adv, *out.fallbacks)
        for c in candidates:
            if c.shape != xs.shape:
                raise RuntimeError(f"{self._owner()} returned shape {tuple(c.shape)} for inputs "
                                   f"{tuple(xs.shape)}")
        pending = torch.arange(len(todo))
        unconfirmed = 0
        for k, cand in enumerate(candidates):
            if not len(pending):
                break
            xa = cand[pending].detach().to(xs.device, xs.dtype)
            x0 = xs[pending]
            flat = xa.reshape(len(xa), -1)
            finite = torch.isfinite(flat).all(dim=1)
            in_bounds = finite & (flat.amin(dim=1) >= 0) & (flat.amax(dim=1) <= 1)
            dist = self.threat.norm(torch.where(torch.isfinite(xa), xa, x0) - x0).double().cpu()
            over = dist > self.epsilon + NORM_TOLERANCE
            if self.MINIMAL_NORM:  # a minimal-norm result beyond epsilon is no violation
                over = torch.zeros_like(over)
            moved = dist > 0  # the input itself is no attack (and needs no predict)
            check = in_bounds.cpu() & ~over & moved
            for j in torch.nonzero(~in_bounds.cpu() | over).flatten().tolist():
                text = ("non-finite values" if not bool(finite[j]) else
                        f"out of bounds [{float(flat[j].min()):.4g}, {float(flat[j].max()):.4g}]"
                        if not bool(in_bounds[j]) else
                        f"norm {float(dist[j]):.4g} > eps {self.epsilon:g}")
                sample = int(todo[pending[j]])
                LOG.warning("%r: sample %d candidate %d violates the threat model (%s); "
                            "counted as not adversarial", self, sample, k, text)
                if states[sample].violation is None:
                    states[sample].violation = text
            sel = torch.nonzero(check).flatten()
            draws = predict_draws(defense, xa[sel], n_draws)  # (D, m)
            votes = majority_vote(draws, ys[pending[sel]].cpu())
            resolved = torch.zeros(len(pending), dtype=torch.bool)
            for m, j in enumerate(sel.tolist()):
                st = states[int(todo[pending[j]])]
                d, v = float(dist[j]), int(votes[m])
                if v != int(ys[pending[j]]):
                    resolved[j] = True
                    if not st.success or (st.distance is not None and d < st.distance):
                        st.success, st.distance, st.pred = True, d, v
                        st.x_adv = xa[j].detach().cpu().clone()
                        st.draws = tuple(int(t) for t in draws[:, m])
                else:
                    if k == 0 and out.flagged is not None and bool(out.flagged[pending[j]]):
                        unconfirmed += 1
                    if not st.success:
                        st.pred, st.draws = v, tuple(int(t) for t in draws[:, m])
            if k == 0:
                counters = getattr(self, "last_counters", None)
                if counters is not None:
                    if out.flagged is not None:
                        flagged = out.flagged.detach().bool().cpu()[pending]
                        counters["flagged_rejected"] += int((flagged & ~resolved).sum())
                    if self.MINIMAL_NORM:
                        counters["unperturbed"] += int((in_bounds.cpu() & ~moved).sum())
            pending = pending[~resolved]
        if unconfirmed:
            LOG.info("%r: %d candidates the library flagged as adversarial were classified "
                     "correctly by predict (counted robust)", self, unconfirmed)

    def _row(self, index: int, label: int, clean: int, st: _SampleState) -> ResultRow:
        if clean != label:  # misclassified clean: not attacked
            return ResultRow(index, label, clean, clean, False, 0.0, (), None)
        if st.success and st.pred is not None:
            within = st.distance is not None and st.distance <= self.epsilon + NORM_TOLERANCE
            if within or not self.MINIMAL_NORM:
                return ResultRow(index, label, clean, st.pred, False, st.distance, st.draws,
                                 st.violation)
            # minimal-norm adversarial beyond epsilon: robust at this budget, distance recorded
            return ResultRow(index, label, clean, clean, True, st.distance, st.draws, st.violation)
        return ResultRow(index, label, clean, clean, True, None, st.draws, st.violation)


def _batch_seed(seed: int, indices: Sequence[int]) -> int:
    """A 63-bit seed from the spec's seed and the batch's sample indices (stable across runs)."""
    text = f"{int(seed)}:" + ",".join(str(int(i)) for i in indices)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


@contextmanager
def _attack_mode(defense: Defense) -> Iterator[None]:
    """Freeze the defense's parameters (attacks need input gradients only) and restore its
    parameters' ``requires_grad`` and every module's train/eval mode afterwards."""
    grads = [(p, p.requires_grad) for p in defense.parameters()]
    modes = [(m, m.training) for m in defense.modules()]
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in grads:
            p.requires_grad_(g)
        for m, t in modes:
            m.training = t


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return repr(value)
