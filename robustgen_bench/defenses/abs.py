"""ABS-like generative classifiers (thesis chapter 2): ABS, E-ABS and the A/D/V ablations.

Families ``abs`` and ``eabs`` share one builder and differ only in their defaults. For an input x
and every class k the defense searches a latent code that explains x under class k's generator
G_k and classifies by the best class score (logits = -score):

    score_k(x) = scale_k · ( ||x - G_k(z*_k)||² + β · prior(z*_k) ) / S

Inference (batched over samples and classes):
1. Candidate search: the best of ``n_init`` latent candidates (drawn once with a fixed seed,
   decoded once per model and cached as non-persistent buffers) by one matrix product
   ``||x||² - 2 x·G + ||G||²`` per class; E-ABS adds the encoder's output as candidate n_init+1.
2. ``steps`` Adam steps (lr ``lr``) on the latent, all samples and classes at once; after each
   step the mean is projected onto the L2 ball of ``radius``.
   - fixed-variance ABS (``variational: false``): optimise z only; prior = ½||z||² (the KL of
     N(z, 1) to N(0, 1) up to a constant) or -log D_k(z) with ``aae``.
   - variational (E-ABS, ablation V, eq. 2.6): optimise μ and log σ² of q(z) = N(μ, σ²) with the
     reparameterisation trick, one sample per step; prior = -log D_k(z) with ``aae``, else
     KL(q || N(0, I)). The final score uses one fresh sample z* ~ q*: predictions are randomized.
3. Logits from the final latent.

Config keys (``entry.yaml`` → ``config``):
- ``architecture``: ``table2.1`` (thesis Table 2.1, ``defenses.modules.GenerativeNets``; the
  :class:`~robustgen_bench.defenses.modules.Geometry` fields are also accepted) or ``schott2019``
  (the authors' per-class VAEs, ``defenses.schott``).
- ``latent_dim`` (10 for table2.1, 8 for schott2019), ``num_classes`` (10).
- ``shared_encoder`` (ablation D): one encoder for all classes (table2.1 only).
- ``aae`` (ablation A): prior term -log D(z); discriminators present (1 if shared else K).
- ``variational`` (ablation V): optimise mean and log-variance (randomized inference).
- ``n_init`` (8000) candidates; ``candidate_keep`` (0.9): the candidates are the ``n_init`` draws of
  highest density among ``int(n_init / candidate_keep)`` draws from N(0, I) (Schott et al.);
  ``candidate_seed`` (22): seed of numpy's legacy ``RandomState`` used for these draws.
- ``steps`` (50) Adam updates, ``lr`` (0.05), ``beta`` (1.0).
- ``logvar_lr`` (null = ``lr``): Adam learning rate of the log-variance (variational only). The
  thesis fixes neither rate; Adam moves each coordinate by about ``lr`` per step, so with equal
  rates σ can shrink from the candidates' 1 to only about exp(-steps·lr/2) in ``steps`` steps.
- ``radius`` (null): L2 ball radius of the latent mean after every step; null = no projection.
- ``encoder_candidate``: include the encoder's (μ, log σ²) as an extra candidate (E-ABS).
- ``binarize`` (null or a threshold): inputs become ``x > threshold`` first; gradients pass it
  as the identity (straight-through).
- ``class_scales`` (null or K floats): per-class factors multiplying the scores (binary ABS).
- ``score_scale``: ``mean`` divides scores by the number of pixels D (Schott et al.), ``sum`` by 1.

Weights: ``load_weight_files({role: path})``. A file whose role is ``class_<k>`` holds class k's
VAE with keys ``Encoder.*`` and ``Decoder.*`` (the authors' format); any other file holds the
whole ``nets.state_dict()`` (keys of ``GenerativeNets``, no prefix). ``.safetensors`` files load
with safetensors, anything else with ``torch.load(weights_only=True)``; loading is strict.

Adaptive hook (``surrogate_logits``): the inner optimisation runs without gradients; the class
losses are then evaluated at the detached z* with x requiring grad, so
d score_k / dx = 2 (x - G_k(z*_k)) · scale_k / S (eq. 2.9).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robustgen_bench.defenses import register_family
from robustgen_bench.defenses.base import Defense
from robustgen_bench.defenses.fused import fuse_for_inference
from robustgen_bench.defenses.modules import GenerativeNets, Geometry
from robustgen_bench.defenses.schott import SchottNets, load_torch_state, straight_through_binarize
from robustgen_bench.errors import ZooError, did_you_mean

ARCHITECTURES = ("table2.1", "schott2019")
SCORE_SCALES = ("mean", "sum")
_CLASS_ROLE = re.compile(r"^class_(\d+)$")
# Rows of candidates decoded at once when building the cache (bounds peak memory).
_DECODE_CHUNK = 2000


@dataclass(frozen=True)
class AbsConfig:
    """Validated inference and architecture settings (see the module docstring)."""

    architecture: str = "table2.1"
    latent_dim: int | None = None
    num_classes: int = 10
    shared_encoder: bool = False
    aae: bool = False
    variational: bool = False
    n_init: int = 8000
    candidate_keep: float = 0.9
    candidate_seed: int = 22
    steps: int = 50
    lr: float = 0.05
    logvar_lr: float | None = None
    beta: float = 1.0
    radius: float | None = None
    encoder_candidate: bool = False
    binarize: float | None = None
    class_scales: tuple[float, ...] | None = None
    score_scale: str = "mean"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> AbsConfig:
        """Merge ``defaults`` and ``config``; ValueError on unknown keys or bad values."""
        own = {f.name for f in dataclasses.fields(cls)}
        known = own | set(Geometry.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown config key {unknown[0]!r}.{did_you_mean(unknown[0], sorted(known))}")
        kw = {**defaults, **{k: v for k, v in config.items() if k in own}}
        if kw.get("binarize") is False:  # `binarize: false` reads as "no binarisation"
            kw["binarize"] = None
        if kw.get("class_scales") is not None:
            kw["class_scales"] = tuple(float(s) for s in kw["class_scales"])
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r}: expected one of {list(ARCHITECTURES)}")
        if self.score_scale not in SCORE_SCALES:
            raise ValueError(f"score_scale {self.score_scale!r}: expected one of {list(SCORE_SCALES)}")
        if self.n_init < 1 or self.steps < 0 or self.lr <= 0 or self.beta < 0:
            raise ValueError("expected n_init >= 1, steps >= 0, lr > 0, beta >= 0")
        if self.logvar_lr is not None and self.logvar_lr <= 0:
            raise ValueError(f"logvar_lr {self.logvar_lr}: expected a positive number or null")
        if not 0 < self.candidate_keep <= 1:
            raise ValueError(f"candidate_keep {self.candidate_keep}: expected a fraction in (0, 1]")
        if self.radius is not None and self.radius <= 0:
            raise ValueError(f"radius {self.radius}: expected a positive number or null")
        if self.binarize is not None and not 0 < self.binarize < 1:
            raise ValueError(f"binarize {self.binarize}: expected a threshold in (0, 1) or null")
        if self.class_scales is not None and (
                len(self.class_scales) != self.num_classes or min(self.class_scales) <= 0):
            raise ValueError(f"class_scales: expected {self.num_classes} positive numbers")
        if self.architecture == "schott2019" and (self.aae or self.shared_encoder):
            raise ValueError("schott2019 has per-class VAEs: aae and shared_encoder must be false")

    @property
    def n_discriminators(self) -> int:
        if not self.aae:
            return 0
        return 1 if self.shared_encoder else self.num_classes


def build_nets(cfg: AbsConfig, config: Mapping[str, Any]) -> nn.Module:
    """The generative networks: ``GenerativeNets`` (table2.1) or ``SchottNets`` (schott2019)."""
    if cfg.architecture == "schott2019":
        return SchottNets(latent_dim=cfg.latent_dim or 8, num_classes=cfg.num_classes)
    geo_cfg = {k: v for k, v in config.items() if k in Geometry.__dataclass_fields__}
    if cfg.latent_dim is not None:
        geo_cfg["latent_dim"] = cfg.latent_dim
    return GenerativeNets(Geometry.from_config(geo_cfg), num_classes=cfg.num_classes,
                          shared_encoder=cfg.shared_encoder, n_discriminators=cfg.n_discriminators)


def sample_candidates(n: int, dim: int, keep: float, seed: int) -> torch.Tensor:
    """(n, dim) latents: the n of highest N(0, I) density among int(n / keep) draws.

    Drawn with numpy's legacy ``RandomState(seed).multivariate_normal`` like Schott et al.
    (scipy's ``multivariate_normal.rvs`` uses the same generator), ties kept as they do.
    """
    rs = np.random.RandomState(seed)
    draws = rs.multivariate_normal(np.zeros(dim), np.eye(dim), size=int(n / keep))
    sq = (draws ** 2).sum(1)  # density is monotone decreasing in ||z||²
    order = np.argsort(sq, kind="stable")[:n]
    return torch.from_numpy(draws[np.sort(order)].astype(np.float32))


def load_class_state(nets: nn.Module, k: int, state: Mapping[str, torch.Tensor]) -> None:
    """Load class k's VAE (keys ``Encoder.*``, ``Decoder.*``) into ``encoders[k]``/``decoders[k]``."""
    enc = {n[len("Encoder."):]: v for n, v in state.items() if n.startswith("Encoder.")}
    dec = {n[len("Decoder."):]: v for n, v in state.items() if n.startswith("Decoder.")}
    if len(enc) + len(dec) != len(state):
        bad = sorted(n for n in state if not n.startswith(("Encoder.", "Decoder.")))
        raise RuntimeError(f"unexpected keys {bad[:5]}")
    if len(nets.encoders) != len(nets.decoders):
        raise RuntimeError("per-class files need one encoder per class (shared_encoder: false)")
    nets.encoders[k].load_state_dict(enc, strict=True)
    nets.decoders[k].load_state_dict(dec, strict=True)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return load_torch_state(path)  # safetensors by suffix, else torch.load(weights_only=True)


@dataclass
class LatentState:
    """Result of the inner optimisation for a batch: tensors are (K, N, L) per class and sample."""

    mu: torch.Tensor
    logvar: torch.Tensor | None  # None for fixed-variance ABS


class ABSDefense(Defense):
    """ABS / E-ABS classifier on (N, C, H, W) images in [0, 1] → logits (N, K)."""

    def __init__(self, cfg: AbsConfig, nets: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        # channels_last makes CPU transposed convolutions ~1.5-3x faster (measured on the
        # Schott decoder); load_state_dict copies into these tensors and keeps the layout.
        self.nets = nets.to(memory_format=torch.channels_last)
        self.num_classes = cfg.num_classes
        self.randomized = cfg.variational
        self.latent_dim = int(cfg.latent_dim or (8 if cfg.architecture == "schott2019" else 10))
        scales = torch.tensor(cfg.class_scales or [1.0] * cfg.num_classes, dtype=torch.float32)
        self.register_buffer("class_scales", scales, persistent=False)
        # Candidate cache (built lazily from the current weights, dropped when weights change):
        # latents (M, L), decoded images (K, M, D), their squared norms and prior terms (K, M).
        for name in ("_cand_z", "_cand_images", "_cand_sq", "_cand_prior"):
            self.register_buffer(name, None, persistent=False)
        #: Where the decoded candidates are kept on disk (set from the verified weights by
        #: :meth:`load_weight_files`; None: rebuilt in every process).
        self.cache_file: Path | None = None
        self._weight_files: tuple[Path, ...] | None = None
        self._fused_inference = True
        self._fused: tuple[tuple[object, ...], list[nn.Module]] | None = None  # (weights key, decoders)

    @property
    def fused_inference(self) -> bool:
        """Decode with inference-only copies (BatchNorm folded, ELU via exp; ``defenses.fused``)
        when the networks are in eval mode; False: the networks themselves (the reference).

        The decoded candidates depend on it (to rounding), so switching it drops them from memory
        and selects the matching cache file.
        """
        return self._fused_inference

    @fused_inference.setter
    def fused_inference(self, on: bool) -> None:
        if bool(on) == self._fused_inference:
            return
        self._fused_inference = bool(on)
        self._cand_z = self._cand_images = self._cand_sq = self._cand_prior = None
        if self._weight_files is not None:
            self.cache_file = self._cache_path(self._weight_files)

    # ----------------------------------------------------------------- weights and cache
    def load_weight_files(self, paths: Mapping[str, Path]) -> None:
        """Load the verified weights files strictly (see the module docstring for the format)."""
        per_class: dict[int, Path] = {}
        whole: list[Path] = []
        for role, path in paths.items():
            m = _CLASS_ROLE.match(role)
            if m:
                per_class[int(m.group(1))] = Path(path)
            else:
                whole.append(Path(path))
        try:
            if whole and per_class or len(whole) > 1:
                raise RuntimeError("expected one whole-model file or one class_<k> file per class")
            if whole:
                self.nets.load_state_dict(_load_state(whole[0]), strict=True)
            else:
                if sorted(per_class) != list(range(self.num_classes)):
                    raise RuntimeError(f"expected roles class_0 .. class_{self.num_classes - 1}, "
                                       f"got {sorted(paths)}")
                for k, path in per_class.items():
                    load_class_state(self.nets, k, _load_state(path))
        except RuntimeError as e:
            raise ZooError(f"weights do not match the architecture: {str(e)[:400]}") from None
        self.clear_cache()
        self._weight_files = tuple(Path(p) for p in paths.values())
        self.cache_file = self._cache_path(self._weight_files)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.clear_cache()
        return out

    def clear_cache(self) -> None:
        """Forget the decoded candidates (call after changing the weights in place)."""
        self._cand_z = self._cand_images = self._cand_sq = self._cand_prior = None
        self.cache_file = None  # the weights may have changed: never reuse a file for them
        self._weight_files = None

    def _cache_path(self, weight_files: Any) -> Path:
        """``<RGBENCH_CACHE>/abs-candidates/<key>.safetensors``, the key a sha256 of the weights
        files' contents and every setting the candidates depend on."""
        from robustgen_bench.zoo import cache_dir, sha256_file

        c = self.cfg
        h = hashlib.sha256()
        for f in sorted(str(Path(f)) for f in weight_files):
            h.update(sha256_file(Path(f)).encode())
        h.update(repr((c.architecture, self.latent_dim, c.num_classes, c.aae, c.shared_encoder,
                       c.n_init, c.candidate_keep, c.candidate_seed, c.beta,
                       str(self._device()),
                       "fused" if self._fused_inference else "reference")).encode())
        return cache_dir() / "abs-candidates" / f"{h.hexdigest()[:32]}.safetensors"

    def _load_cached_candidates(self) -> bool:
        """Fill the candidate cache from :attr:`cache_file`; False when there is none."""
        if self.cache_file is None or not self.cache_file.is_file():
            return False
        from safetensors.torch import load_file

        try:
            t = load_file(str(self.cache_file), device=str(self._device()))
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never trusted
            return False
        self._cand_z, self._cand_images = t["z"], t["images"]
        self._cand_sq, self._cand_prior = t["sq"], t["prior"]
        return True

    def _save_cached_candidates(self) -> None:
        """Write the candidate cache (atomically; silently skipped where the cache is read-only)."""
        if self.cache_file is None:
            return
        from safetensors.torch import save_file

        tmp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            save_file({"z": self._cand_z.contiguous(), "images": self._cand_images.contiguous(),
                       "sq": self._cand_sq.contiguous(), "prior": self._cand_prior.contiguous()},
                      str(tmp))
            os.replace(tmp, self.cache_file)
        except OSError:
            tmp.unlink(missing_ok=True)

    @torch.no_grad()
    def build_cache(self) -> None:
        """Decode the ``n_init`` candidates once per class: (K, M, D) images and (K, M) terms.

        Read from :attr:`cache_file` when an earlier process wrote it for the same weights and
        settings (about 15 s of decoding saved per process), else built and written there.
        """
        if self._load_cached_candidates():
            return
        self._build_cache()
        self._save_cached_candidates()

    @torch.no_grad()
    def _build_cache(self) -> None:
        z = sample_candidates(self.cfg.n_init, self.latent_dim, self.cfg.candidate_keep,
                              self.cfg.candidate_seed).to(self._device())
        images, priors = [], []
        for k in range(self.num_classes):
            chunks = [self._decode(k, z[i:i + _DECODE_CHUNK]).flatten(1)
                      for i in range(0, len(z), _DECODE_CHUNK)]
            images.append(torch.cat(chunks))
            priors.append(self._prior(k, z))
        self._cand_images = torch.stack(images)
        self._cand_sq = self._cand_images.pow(2).sum(-1)
        self._cand_prior = torch.stack(priors)
        self._cand_z = z

    def _device(self) -> torch.device:
        return next(self.nets.parameters()).device

    # ----------------------------------------------------------------- model pieces
    def _decode(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Class k's generator: z (M, L) → images (M, C, H, W)."""
        if self.fused_inference and not self.nets.training:
            return self._fused_decoders()[k](z)
        return self.nets.decoders[k](z)

    def _fused_decoders(self) -> list[nn.Module]:
        """Inference copies of the decoders, rebuilt whenever a weight changed (version counters)."""
        tensors = [*self.nets.decoders.parameters(), *self.nets.decoders.buffers()]
        key = (self._device(), tuple(t._version for t in tensors), tuple(id(t) for t in tensors))
        if self._fused is None or self._fused[0] != key:
            # Built outside inference mode: the copies are used later with autograd (Adam loop).
            with torch.inference_mode(False):
                self._fused = (key, [fuse_for_inference(d) for d in self.nets.decoders])
        return self._fused[1]

    def _prior(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Prior term of a point latent for class k: z (M, L) → (M,); -log D_k(z) or ½||z||²."""
        if self.cfg.aae:
            disc = self.nets.discriminators[0 if len(self.nets.discriminators) == 1 else k]
            return -F.logsigmoid(disc(z))
        return 0.5 * z.pow(2).sum(-1)

    def _score_scale(self, d: int) -> float:
        return 1.0 / d if self.cfg.score_scale == "mean" else 1.0

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Binarise (straight-through) when configured; returns (N, C, H, W)."""
        if self.cfg.binarize is not None:
            return straight_through_binarize(x, self.cfg.binarize)
        return x

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def initial_latents(self, x: torch.Tensor) -> LatentState:
        """Best candidate per sample and class: x (N, C, H, W) → LatentState with (K, N, L)."""
        if self._cand_images is None:
            self.build_cache()
        xf = x.flatten(1)
        x_sq = xf.pow(2).sum(-1)
        beta = self.cfg.beta
        best_idx, best_val = [], []
        for k in range(self.num_classes):
            # ||x - G||² + β prior = ||x||² - 2 x·G + ||G||² + β prior, as one matrix product.
            const = self._cand_sq[k] + beta * self._cand_prior[k]
            scores = torch.addmm(const.unsqueeze(0), xf, self._cand_images[k].T, alpha=-2.0)
            val, idx = scores.min(dim=1)
            best_idx.append(idx)
            best_val.append(val + x_sq)
        mu = self._cand_z[torch.stack(best_idx)]  # (K, N, L)
        logvar = torch.zeros_like(mu) if self.cfg.variational else None
        if self.cfg.encoder_candidate:
            values = torch.stack(best_val)
            mu, logvar = self._encoder_candidate(x, mu, logvar, values)
        return LatentState(mu=mu.clone(), logvar=logvar)

    def _encoder_candidate(self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor | None,
                           values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Replace the candidate by the encoder's output where it scores lower (E-ABS, 8000 + 1)."""
        xf = x.flatten(1)
        encs = self.nets.encoders
        enc_out = [encs[0].latent(x)] * self.num_classes if len(encs) == 1 else [e.latent(x) for e in encs]
        for k, (e_mu, e_logvar) in enumerate(enc_out):
            rec = self._decode(k, e_mu).flatten(1)
            val = (xf - rec).pow(2).sum(-1) + self.cfg.beta * self._prior(k, e_mu)
            better = val < values[k]
            mu[k][better] = e_mu[better]
            if logvar is not None:
                logvar[k][better] = e_logvar[better]
        return mu, logvar

    def _objective(self, xf: torch.Tensor, state: LatentState, eps: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class losses before scaling: reconstructions (K, N, D) and prior terms (K, N).

        Fixed variance: at z = μ. Variational: at z = μ + σ·eps (one reparameterised sample).
        """
        z = state.mu
        if state.logvar is not None:
            assert eps is not None
            z = state.mu + torch.exp(0.5 * state.logvar) * eps
        recs, priors = [], []
        for k in range(self.num_classes):
            recs.append(self._decode(k, z[k]).flatten(1))
            if state.logvar is not None and not self.cfg.aae:
                # KL(N(μ, σ²) || N(0, I)), closed form.
                lv = state.logvar[k]
                priors.append(0.5 * (state.mu[k].pow(2) + lv.exp() - lv - 1.0).sum(-1))
            else:
                priors.append(self._prior(k, z[k]))
        return torch.stack(recs), torch.stack(priors)

    @torch.no_grad()
    def _point_scores(self, xf: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Unscaled class losses at the point latents mu (K, N, L): (K, N) (the candidate score)."""
        return torch.stack([(xf - self._decode(k, mu[k]).flatten(1)).pow(2).sum(-1)
                            + self.cfg.beta * self._prior(k, mu[k])
                            for k in range(self.num_classes)])

    def _warm_start(self, x: torch.Tensor, state: LatentState, init: LatentState) -> LatentState:
        """Per (class, sample), the better start of the candidate search and ``init``."""
        if init.mu.shape != state.mu.shape or (init.logvar is None) != (state.logvar is None):
            raise ValueError(f"warm start of shape {tuple(init.mu.shape)} for latents "
                             f"{tuple(state.mu.shape)}")
        xf = x.flatten(1)
        better = self._point_scores(xf, init.mu) < self._point_scores(xf, state.mu)  # (K, N)
        mu = torch.where(better.unsqueeze(-1), init.mu, state.mu)
        logvar = None if state.logvar is None else torch.where(
            better.unsqueeze(-1), init.logvar, state.logvar)
        return LatentState(mu=mu.clone(), logvar=None if logvar is None else logvar.clone())

    def optimise(self, x: torch.Tensor, init: LatentState | None = None,
                 steps: int | None = None) -> LatentState:
        """The inner optimisation (no gradient to x): x (N, C, H, W) → LatentState (K, N, L).

        ``init`` (warm start): per (class, sample) the optimisation starts from whichever of
        ``init`` and the candidate search scores better on x; ``steps`` overrides the config's.
        """
        if torch.is_inference_mode_enabled():
            # Callers may run predict under inference_mode; the latent search needs autograd.
            with torch.inference_mode(False):
                state = self.optimise(x.clone(), init, steps)
                return LatentState(mu=state.mu.clone(),
                                   logvar=None if state.logvar is None else state.logvar.clone())
        x = x.detach()
        state = self.initial_latents(x)
        if init is not None:
            state = self._warm_start(x, state, init)
        steps = self.cfg.steps if steps is None else steps
        if steps == 0:
            return state
        xf = x.flatten(1)
        scale = self._score_scale(xf.shape[1])
        params = [state.mu.requires_grad_(True)]
        groups: list[dict[str, Any]] = [{"params": [state.mu], "lr": self.cfg.lr}]
        if state.logvar is not None:
            params.append(state.logvar.requires_grad_(True))
            groups.append({"params": [state.logvar], "lr": self.cfg.logvar_lr or self.cfg.lr})
        # Adam is element-wise: one group per tensor with equal rates is the single-group optimiser.
        opt = torch.optim.Adam(groups)
        with torch.enable_grad():
            for _ in range(steps):
                eps = torch.randn_like(state.mu) if state.logvar is not None else None
                recs, priors = self._objective(xf, state, eps)
                # Sum over samples and classes: Adam is element-wise, so each (sample, class)
                # latent follows its own trajectory, as in the authors' implementation.
                loss = ((xf.unsqueeze(0) - recs).pow(2).sum(-1) + self.cfg.beta * priors).sum() * scale
                grads = torch.autograd.grad(loss, params)
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
                if self.cfg.radius is not None:
                    with torch.no_grad():
                        norm = state.mu.norm(dim=-1, keepdim=True)
                        state.mu.mul_(torch.clamp(self.cfg.radius / norm.clamp_min(1e-12), max=1.0))
        return LatentState(mu=state.mu.detach(),
                           logvar=None if state.logvar is None else state.logvar.detach())

    @torch.no_grad()
    def final_terms(self, xf: torch.Tensor, state: LatentState) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructions G_k(z*) (K, N, D) and prior terms (K, N) at the optimum (z* ~ q* if variational)."""
        eps = torch.randn_like(state.mu) if state.logvar is not None else None
        return self._objective(xf, state, eps)

    def _logits(self, x: torch.Tensor, recs: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        """-(scaled class scores): x (N, C, H, W) (may require grad), recs (K, N, D) → (N, K)."""
        xf = x.flatten(1)
        scores = (xf.unsqueeze(0) - recs).pow(2).sum(-1) + self.cfg.beta * priors  # (K, N)
        scores = scores * self._score_scale(xf.shape[1]) * self.class_scales.unsqueeze(1)
        return -scores.T

    def inner_solution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached G_k(z*) (K, N, D) and prior terms (K, N) for x (N, C, H, W): one draw."""
        xp = self._prepare(x).detach()
        state = self.optimise(xp)
        return self.final_terms(xp.flatten(1), state)

    def warm_solution(self, x: torch.Tensor, previous: object | None,
                      steps: int) -> tuple[object, object]:
        """(G_k(z*), prior terms) and the LatentState to carry; see :meth:`Defense.warm_solution`.

        Cold (``previous`` None): the full inference, as :meth:`inner_solution`.
        """
        xp = self._prepare(x).detach()
        if previous is None:
            state = self.optimise(xp)
        else:
            state = self.optimise(xp, init=previous, steps=steps)  # type: ignore[arg-type]
        return self.final_terms(xp.flatten(1), state), state

    def logits_at_solution(self, x: torch.Tensor, solution: object) -> torch.Tensor:
        recs, priors = solution  # type: ignore[misc]
        return self._logits(self._prepare(x), recs, priors)

    def surrogate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Detached-z* logits (N, K): d(-logit_k)/dx = 2 (x - G_k(z*_k)) · scale_k / S."""
        return self.logits_at_solution(x, self.inner_solution(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Deployed inference (fresh randomness when variational): (N, C, H, W) → logits (N, K)."""
        with torch.no_grad():
            return self.surrogate_logits(x)


ABS_DEFAULTS: dict[str, Any] = {}
EABS_DEFAULTS: dict[str, Any] = {
    "shared_encoder": True, "aae": True, "variational": True, "encoder_candidate": True,
}


def _build(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> ABSDefense:
    cfg = AbsConfig.from_config(config, defaults)
    return ABSDefense(cfg, build_nets(cfg, config))


@register_family("abs")
def build_abs(config: dict, *, entry: object = None) -> ABSDefense:
    """ABS (Schott et al.): per-class VAEs, fixed-variance inference; ablations via the config."""
    return _build(config, ABS_DEFAULTS)


@register_family("eabs")
def build_eabs(config: dict, *, entry: object = None) -> ABSDefense:
    """E-ABS: shared encoder, AAE discriminator, variational inference, encoder candidate."""
    return _build(config, EABS_DEFAULTS)
