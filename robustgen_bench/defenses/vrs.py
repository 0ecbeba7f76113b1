"""Variational randomized smoothing (VRS; thesis chapter 4, Algorithm 5), a wrapper over a zoo classifier.

For an input x and each class y the defense

1. finds a noise mean mu_y by projected *targeted* optimisation: ``steps`` ascent steps on the
   log-softmax of class y at ``clip(x + delta)``, from a uniform random start in the Lp ball of
   radius ``radius`` (``norm`` l2|linf), projecting delta back onto the ball after every step
   (thesis eq. 4.9 and section 4.3: "one-step optimization with random starting points");
2. draws ``samples`` noises eps ~ N(mu_y, sigma^2 I) and returns, as class y's logit, the mean over
   the draws of ``log_softmax(f(x + eps))[y]`` (Algorithm 5 with the thesis's EOT average).

Decisions the thesis leaves open, made here and documented in each entry's README:

- Eq. 4.9 writes ``argmin L_y``; the text says the mean must *raise* class y's likelihood (like a
  targeted attack), so the optimisation maximises log p(y | x + delta) (sign-gradient ascent for
  linf, normalised-gradient ascent for l2).
- "N(mu, sigma I), variance sigma" vs "a fixed standard deviation of 0.05": ``sigma`` is the
  standard deviation, the value the Gaussian-augmented base models are trained with.
- Bounds (``clip``): ``mean`` (default) clips the mean image x + mu_y to [0, 1], so the search
  only visits valid images and mu_y = clip(x + delta) - x stays inside the ball (clipping only
  shrinks each coordinate); the Gaussian noise is added unclipped, as in Gaussian data
  augmentation / randomized smoothing, so q_y stays a Gaussian. ``all`` also clips x + eps,
  ``none`` clips nothing.
- Default step size 1.25 * radius, the single-step random-start rule of Wong et al. (the thesis's
  ref. [110], which it cites for the one-step choice).

Gradients (``adaptive``): ``surrogate_logits`` is differentiable through the base model at
x + eps. The search result delta is detached by default: for ``linf`` its dependence on x goes only
through ``sign(grad)``, which is piecewise constant, so dropping it loses nothing almost everywhere
and the hook is ``exact``. For ``l2`` (normalised gradient) set ``differentiate_mu: true`` to keep
the search in the graph (second-order backward, about 2x the cost); otherwise the dropped term
makes the l2 gradient an approximation akin to a detached inner optimum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from robustgen_bench.adaptive import GradientHook
from robustgen_bench.errors import ZooError, did_you_mean
from robustgen_bench.threat import Threat

from . import register_family
from .base import Defense

CLIP_MODES = ("mean", "all", "none")


@dataclass(frozen=True)
class VRSConfig:
    """Hyper-parameters of Algorithm 5 (entry.yaml ``config``)."""

    norm: Threat = Threat.LINF
    radius: float = 0.1  # d: radius of the ball the mean mu_y is searched in
    steps: int = 1  # projected ascent steps (thesis default: one)
    step_size: float | None = None  # None: 1.25 * radius
    sigma: float = 0.05  # standard deviation of the noise around mu_y
    samples: int = 5  # noise draws per class averaged into one output (thesis EOT: 5)
    clip: str = "mean"  # see module docstring
    differentiate_mu: bool = False  # keep the mean search in the autograd graph
    max_batch: int = 4096  # images per base forward (memory bound only; no effect on values)

    def __post_init__(self) -> None:
        if self.radius < 0 or self.sigma < 0:
            raise ValueError("radius and sigma must be >= 0")
        if self.steps < 0 or self.samples < 1 or self.max_batch < 1:
            raise ValueError("steps must be >= 0, samples and max_batch >= 1")
        if self.clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {CLIP_MODES}, got {self.clip!r}")

    @property
    def alpha(self) -> float:
        """The ascent step size."""
        return 1.25 * self.radius if self.step_size is None else float(self.step_size)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> VRSConfig:
        """Validate an entry's ``config``; unknown keys raise ValueError (ZooError via build_defense)."""
        names = [f.name for f in fields(cls)]
        for k in cfg:
            if k not in names:
                raise ValueError(f"unknown VRS config key {k!r}.{did_you_mean(k, names)}")
        kw = dict(cfg)
        if "norm" in kw:
            try:
                kw["norm"] = Threat(kw["norm"])
            except ValueError:
                raise ValueError(f"norm must be 'l2' or 'linf', got {kw['norm']!r}") from None
        for k in ("radius", "sigma"):
            if k in kw:
                kw[k] = float(kw[k])
        return cls(**kw)


def _per_sample(t: torch.Tensor, dims: int) -> torch.Tensor:
    """Reshape a per-sample quantity (M,) to broadcast against (M, ...) with ``dims`` trailing dims."""
    return t.view(-1, *([1] * dims))


def project_ball(delta: torch.Tensor, norm: Threat, radius: float) -> torch.Tensor:
    """Project each delta[i] onto {||.||_p <= radius}: (M, C, H, W) -> (M, C, H, W)."""
    if norm is Threat.LINF:
        return delta.clamp(-radius, radius)
    n = delta.flatten(1).norm(dim=1)
    scale = torch.clamp(radius / n.clamp_min(1e-12), max=1.0)
    return delta * _per_sample(scale, delta.dim() - 1)


def random_in_ball(shape: torch.Size | tuple[int, ...], norm: Threat, radius: float,
                   like: torch.Tensor) -> torch.Tensor:
    """Uniform samples in the ball, shape (M, C, H, W), drawn from torch's global generator."""
    if norm is Threat.LINF:
        return (torch.rand(shape, dtype=like.dtype, device=like.device) * 2 - 1) * radius
    # Uniform in the l2 ball: a uniform direction times radius * U^(1/D).
    g = torch.randn(shape, dtype=like.dtype, device=like.device)
    d = g[0].numel()
    direction = g / _per_sample(g.flatten(1).norm(dim=1).clamp_min(1e-12), g.dim() - 1)
    r = radius * torch.rand(shape[0], dtype=like.dtype, device=like.device) ** (1.0 / d)
    return direction * _per_sample(r, g.dim() - 1)


def ascent_direction(grad: torch.Tensor, norm: Threat) -> torch.Tensor:
    """Steepest-ascent direction of unit Lp norm: sign for linf, grad/||grad||_2 for l2."""
    if norm is Threat.LINF:
        return grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / _per_sample(n, grad.dim() - 1)


class VRS(Defense):
    """VRS over a deterministic, exactly differentiable ``base``: images (N, C, H, W) -> (N, K).

    The output's column y is the mean over ``samples`` draws of log p(y | x + eps), eps ~ N(mu_y, sigma^2 I).
    """

    randomized = True

    def __init__(self, base: Defense, cfg: VRSConfig) -> None:
        super().__init__()
        self.base = base
        self.cfg = cfg
        self.num_classes = int(getattr(base, "num_classes", 10))

    # -- pieces -----------------------------------------------------------------------------

    def _log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        """Base log-probabilities (M, C, H, W) -> (M, K), in chunks of ``max_batch`` images."""
        outs = [torch.log_softmax(self.base.surrogate_logits(c), dim=1)
                for c in torch.split(x, self.cfg.max_batch)]
        return torch.cat(outs)

    def _clip_mean(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.cfg.clip == "none" else x.clamp(0.0, 1.0)

    def class_deltas(self, x: torch.Tensor) -> torch.Tensor:
        """The searched perturbations delta_y for every class: x (N, C, H, W) -> (K, N, C, H, W).

        Each delta_y lies in the ball; the mean image is ``clip(x + delta_y)`` so
        mu_y = clip(x + delta_y) - x is in the ball too. Detached unless ``differentiate_mu``.
        """
        cfg, k = self.cfg, self.num_classes
        keep_graph = cfg.differentiate_mu and torch.is_grad_enabled()
        xs = x if keep_graph else x.detach()
        xk = xs.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:])
        delta = random_in_ball(xk.shape, cfg.norm, cfg.radius, like=x)
        if cfg.radius == 0 or cfg.steps == 0:
            return delta.view(k, *x.shape)
        cls = torch.arange(k, device=x.device).repeat_interleave(x.shape[0])  # target class per row
        with torch.enable_grad():
            for _ in range(cfg.steps):
                if not delta.requires_grad:
                    delta = delta.requires_grad_(True)
                logp = self._log_softmax(self._clip_mean(xk + delta))
                target = logp.gather(1, cls[:, None]).sum()
                (grad,) = torch.autograd.grad(target, delta, create_graph=keep_graph)
                delta = project_ball(delta + cfg.alpha * ascent_direction(grad, cfg.norm),
                                     cfg.norm, cfg.radius)
                if not keep_graph:
                    delta = delta.detach()
        return delta.view(k, *x.shape)

    # -- Defense API ------------------------------------------------------------------------

    def _chunks(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split inputs so one base forward holds at most ``max_batch`` images."""
        per = max(1, self.cfg.max_batch // (self.num_classes * self.cfg.samples))
        return torch.split(x, per)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Deployed inference with fresh randomness: (N, C, H, W) -> (N, K), no gradients kept."""
        outs = []
        for c in self._chunks(x):
            delta = self.class_deltas(c.detach())  # the search needs autograd even here
            with torch.no_grad():
                outs.append(self._sample_logits(c, delta))
        return torch.cat(outs)

    def _sample_logits(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Class y's mean log-prob over ``samples`` draws around clip(x + delta_y): -> (N, K).

        x (N, C, H, W), delta (K, N, C, H, W); differentiable in x when grad mode is on.
        """
        cfg, k, n = self.cfg, self.num_classes, x.shape[0]
        mean = self._clip_mean(x.unsqueeze(0) + delta)
        noisy = mean.unsqueeze(0) + cfg.sigma * torch.randn(
            (cfg.samples, *mean.shape), dtype=x.dtype, device=x.device)
        if cfg.clip == "all":
            noisy = noisy.clamp(0.0, 1.0)
        logp = self._log_softmax(noisy.reshape(-1, *x.shape[1:])).view(cfg.samples, k, n, k)
        idx = torch.arange(k, device=x.device)
        own = logp[:, idx, :, idx]  # (K, S, N): class y's log-prob at its own noisy inputs
        return own.mean(dim=1).t()  # (N, K)

    def surrogate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """One differentiable draw (N, K): gradients flow through the base at x + eps."""
        return torch.cat([self._sample_logits(c, self.class_deltas(c)) for c in self._chunks(x)])

    def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.surrogate_logits(x)

    def train(self, mode: bool = True) -> VRS:
        """The base stays in eval mode: VRS is an inference-time wrapper, never trained."""
        super().train(mode)
        self.base.eval()
        return self


def _zoo_root_of(entry: Any) -> Path:
    """The zoo root an entry lives in (its folder minus the id's path parts)."""
    root = Path(entry.path)
    for _ in entry.id.split("/"):
        root = root.parent
    return root


@register_family("vrs")
def build(config: dict, *, entry: Any) -> VRS:
    """Build VRS over ``entry.base`` (a zoo id in the same zoo), whose weights are verified on load."""
    from robustgen_bench.zoo import build_defense, get_entry

    if not entry.base:
        raise ZooError("a vrs entry needs 'base: <zoo id>' naming the wrapped classifier",
                       file=entry.entry_file, key="base")
    base_entry = get_entry(entry.base, _zoo_root_of(entry))
    if base_entry.adaptive.gradient is not GradientHook.EXACT or base_entry.adaptive.randomized:
        raise ZooError(f"base {entry.base!r} must be deterministic with gradient: exact "
                       f"(got {base_entry.adaptive.gradient.value}, randomized="
                       f"{base_entry.adaptive.randomized})", file=entry.entry_file, key="base")
    cfg = VRSConfig.from_config(config)
    return VRS(build_defense(base_entry), cfg)


__all__ = ["VRS", "VRSConfig", "build", "project_ball", "random_in_ball", "ascent_direction"]
