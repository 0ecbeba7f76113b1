"""GAN-based ABS (thesis chapter 3, Algorithms 2-4): classify by conditional GAN inversion.

For every class y the defense finds a latent code z* that makes the conditional generator's image
G(z, y) close to the input x (Algorithm 2), starting from an initialiser I(x, y):

- ``direct``: the best of N cached random codes by L2 (Algorithm 3); codes and their images are
  cached once per model, not per call;
- ``enc`` / ``enc-d``: an encoder's code E(x) (Algorithm 4); the two differ only in how the
  encoder was trained (eq. 3.3, image discriminator, vs eq. 3.5, latent discriminator), so they
  share this inference path and differ in their weights.

The loss is l = D(x, G(z, y)) + λ ||z - z_init||² with D the squared L2 distance or the
normalised feature distance of eq. 3.6/3.7; z is optimised with Adam under the cyclical learning
rate of section 3.3. The "+" variant (``plus_variant``) gives each generator block its own latent
copy z + z_i (self-modulation makes this possible), each offset z_i regularised by λ ||z_i||².
The class logit is -l_y.

Networks (28x28 grayscale, MNIST / Fashion-MNIST):

- :class:`Generator`: self-modulated conditional generator. Block 0 is the input projection,
  blocks 1..3 are (modulated BatchNorm -> ReLU -> [upsample] -> conv). Every block receives its own
  latent (N, B, latent_dim); the training-time generator feeds the same z to all of them.
- :class:`ProjectionDiscriminator`: spectral-normalised conv net with a projection head
  (Miyato & Koyama 2018): D(x, y) = ψ(φ(x)) + <embed(y), φ(x)>; optionally a minibatch-stddev
  channel before its last conv (Karras et al. 2018), which lets it see a lack of variety.
- :class:`Encoder`: x (N, 1, 28, 28) -> z (N, latent_dim), class-agnostic as in the thesis.
- :class:`FeatureNet`: a small CNN classifier whose intermediate activations define the feature
  distance; trained with Gaussian-noise augmentation (standing in for the corruption-robust model).

Adaptive hook (``gradient: detached_zstar``): the inner optimisation runs without a graph to x;
the loss is then evaluated at the detached z* with x requiring grad, so for the L2 distance
d(-logit)/dx = 2 (x - G(z*, y)) / distance_scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from robustgen_bench.defenses import register_family
from robustgen_bench.defenses.base import Defense

INITIALISERS = ("direct", "enc", "enc-d")
DISTANCES = ("l2", "feature")


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GanGeometry:
    """Sizes of the GAN-ABS networks (28x28 inputs)."""

    latent_dim: int = 16
    num_classes: int = 10
    in_channels: int = 1
    gen_channels: int = 16  # width of the last generator block; earlier blocks are 2x and 4x
    embed_dim: int = 16
    disc_channels: int = 32
    enc_channels: int = 32
    feat_channels: int = 32
    # Minibatch-stddev group size in the discriminator (0 = off). One of the three changes that
    # stopped the MNIST cGAN from ignoring z (model_zoo/mnist/gan-abs/README.md); alone it did not.
    disc_minibatch_std: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GanGeometry:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


class ModulatedBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are functions of (latent, class embedding): self-modulation.

    h (N, C, H, W), cond (N, latent_dim + embed_dim) -> (N, C, H, W).
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Linear(cond_dim, channels)
        self.beta = nn.Linear(cond_dim, channels)
        # Start as plain BatchNorm (scale 1, shift 0) so early training is stable.
        for lin in (self.gamma, self.beta):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        g = 1.0 + self.gamma(cond)
        b = self.beta(cond)
        return self.bn(h) * g[:, :, None, None] + b[:, :, None, None]


class Generator(nn.Module):
    """Self-modulated conditional generator: (z, y) -> image (N, 1, 28, 28) in (0, 1).

    ``forward(z, y)`` with z (N, latent_dim) feeds the same z to every block (training time);
    ``forward_blocks(zs, y)`` with zs (N, n_blocks, latent_dim) gives block i its own latent
    (the overparameterised "+" inference). Spatial sizes: 7 -> 14 -> 28 -> 28.
    """

    n_blocks = 4

    def __init__(self, g: GanGeometry) -> None:
        super().__init__()
        c = g.gen_channels
        self.geometry = g
        self.embed = nn.Embedding(g.num_classes, g.embed_dim)
        cond = g.latent_dim + g.embed_dim
        self.fc = nn.Linear(cond, 4 * c * 7 * 7)
        self.norms = nn.ModuleList([ModulatedBatchNorm(4 * c, cond), ModulatedBatchNorm(2 * c, cond),
                                    ModulatedBatchNorm(c, cond)])
        self.convs = nn.ModuleList([nn.Conv2d(4 * c, 2 * c, 3, 1, 1), nn.Conv2d(2 * c, c, 3, 1, 1),
                                    nn.Conv2d(c, g.in_channels, 3, 1, 1)])
        self.upsample = (True, True, False)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(z.unsqueeze(1).expand(-1, self.n_blocks, -1), y)

    def forward_blocks(self, zs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """zs (N, n_blocks, latent_dim), y (N,) int -> images (N, C, 28, 28)."""
        e = self.embed(y)
        h = self.fc(torch.cat([zs[:, 0], e], 1)).view(zs.shape[0], -1, 7, 7)
        for i, (norm, conv, up) in enumerate(zip(self.norms, self.convs, self.upsample)):
            h = F.relu(norm(h, torch.cat([zs[:, i + 1], e], 1)))
            if up:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = conv(h)
        return torch.sigmoid(h)


class ProjectionDiscriminator(nn.Module):
    """Spectral-normalised projection discriminator: (x (N, 1, 28, 28), y (N,)) -> score (N,).

    With ``disc_minibatch_std = G`` the 14x14 features get one extra channel before the last conv:
    the feature standard deviation across each group of G samples (samples i, i + N/G, ...),
    averaged to one number per group, so a generator whose samples all look alike is detectable.
    """

    def __init__(self, g: GanGeometry) -> None:
        super().__init__()
        c = g.disc_channels
        self.mbstd_group = g.disc_minibatch_std
        extra = 1 if self.mbstd_group else 0
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(g.in_channels, c, 3, 1, 1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.1),  # 14x14
            spectral_norm(nn.Conv2d(2 * c + extra, 4 * c, 4, 2, 1)), nn.LeakyReLU(0.1),  # 7x7
        )
        self.out = spectral_norm(nn.Linear(4 * c, 1))
        self.proj = spectral_norm(nn.Embedding(g.num_classes, 4 * c))

    def minibatch_std(self, h: torch.Tensor) -> torch.Tensor:
        """h (N, C, H, W) -> (N, C + 1, H, W); groups of ``mbstd_group`` (whole batch if N does not split)."""
        n = h.shape[0]
        group = self.mbstd_group if n % self.mbstd_group == 0 else n
        if group < 2:  # a single sample has no spread
            return torch.cat([h, torch.zeros_like(h[:, :1])], 1)
        sd = h.view(group, n // group, *h.shape[1:]).std(0).mean(dim=(1, 2, 3))  # (N/group,)
        sd = sd.repeat(group)[:, None, None, None].expand(-1, 1, *h.shape[2:])
        return torch.cat([h, sd], 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body[:4](x)
        if self.mbstd_group:
            h = self.minibatch_std(h)
        h = self.body[4:](h).sum(dim=(2, 3))  # global sum pooling, as in SNGAN-projection
        return self.out(h).squeeze(1) + (self.proj(y) * h).sum(1)


class Encoder(nn.Module):
    """Class-agnostic encoder E: x (N, 1, 28, 28) -> z (N, latent_dim)."""

    def __init__(self, g: GanGeometry) -> None:
        super().__init__()
        c = g.enc_channels
        self.net = nn.Sequential(
            nn.Conv2d(g.in_channels, c, 4, 2, 1), nn.LeakyReLU(0.2),  # 14
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2),  # 7
            nn.Flatten(), nn.Linear(2 * c * 49, 256), nn.LeakyReLU(0.2), nn.Linear(256, g.latent_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentDiscriminator(nn.Module):
    """D_latent of eq. 3.5: z (N, latent_dim) -> logit (N,) of "drawn from the prior N(0, I)"."""

    def __init__(self, g: GanGeometry) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(g.latent_dim, 256), nn.LeakyReLU(0.2),
                                 nn.Linear(256, 128), nn.LeakyReLU(0.2), nn.Linear(128, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


class FeatureNet(nn.Module):
    """Small CNN classifier; ``features(x)`` returns the activations used by the feature distance.

    x (N, 1, 28, 28) -> features [(N, c, 28, 28), (N, 2c, 14, 14)]; ``forward`` -> logits (N, 10).
    """

    def __init__(self, g: GanGeometry) -> None:
        super().__init__()
        c = g.feat_channels
        self.block1 = nn.Sequential(nn.Conv2d(g.in_channels, c, 3, 1, 1), nn.ReLU())
        self.block2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c, 2 * c, 3, 1, 1), nn.ReLU())
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * c * 49, g.num_classes))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.block1(x)
        return [f1, self.block2(f1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1])


# --------------------------------------------------------------------------------------------
# Inference pieces (Algorithm 2): initialisers, distances, schedule
# --------------------------------------------------------------------------------------------


def cyclical_lr_factor(step: int, total: int) -> float:
    """Learning-rate multiplier of section 3.3 at optimisation ``step`` of ``total`` (0-based).

    Starts at 1/10 of the maximum, rises linearly to the maximum over the first 30% of the steps,
    falls linearly to 1/100 of the maximum over the next 60%, and stays there for the last 10%
    (the thesis leaves the last 10% unstated; holding the floor is our reading).
    """
    if total <= 0:
        raise ValueError("total steps must be positive")
    p = step / total
    if p < 0.3:
        return 0.1 + 0.9 * p / 0.3
    if p < 0.9:
        return 1.0 - 0.99 * (p - 0.3) / 0.6
    return 0.01


def pairwise_sq_l2(x: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances between x (N, D) and candidates (M, D) -> (N, M), as one matmul."""
    return (x.pow(2).sum(1, keepdim=True) - 2.0 * x @ cand.T + cand.pow(2).sum(1)[None]).clamp_min(0)


def direct_init(x: torch.Tensor, codes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Algorithm 3 for every class at once.

    x (N, C, H, W); codes (M, latent_dim) shared by all classes; images (K, M, C, H, W) with
    images[k, i] = G(codes[i], k). Returns z_init (N, K, latent_dim): for each (sample, class) the
    cached code whose image is nearest to x in L2.
    """
    xf = x.flatten(1)
    best = torch.stack([pairwise_sq_l2(xf, images[k].flatten(1)).argmin(1)
                        for k in range(images.shape[0])], 1)  # (N, K)
    return codes[best]


def normalise_channels(f: torch.Tensor) -> torch.Tensor:
    """Scale each channel of f (N, C, H, W) to L2 norm sqrt(H*W) (eq. 3.6's ``normalize``)."""
    flat = f.flatten(2)
    norm = flat.norm(dim=2, keepdim=True).clamp_min(1e-8)
    return (flat / norm * math.sqrt(flat.shape[2])).view_as(f)


def feature_distance(fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 3.6: (1/K) sum_k (1/c_k) ||normalize(F_k(a)) - normalize(F_k(b))||² -> (N,).

    fa, fb: the K feature maps of two image batches, each (N, c_k, h_k, w_k).
    """
    terms = [(normalise_channels(a) - normalise_channels(b)).pow(2).flatten(1).sum(1) / a.shape[1]
             for a, b in zip(fa, fb)]
    return torch.stack(terms).mean(0)


@dataclass(frozen=True)
class InferenceSettings:
    """The interchangeable parts of Algorithm 2, read from an entry's ``config``."""

    initialiser: str = "direct"
    distance: str = "l2"
    lam: float = 1.0  # regulariser weight λ
    steps: int = 50
    max_lr: float = 0.1
    n_init: int = 300  # cached random codes for ``direct``
    init_seed: int = 0
    plus_variant: bool = False
    feature_weight: float = 1.0  # λ_perceptual of eq. 3.7
    distance_scale: float = 1.0  # D is divided by this (keeps λ comparable across distances)
    batch_size: int = 64  # samples per inference batch (each expands to K class problems)

    def __post_init__(self) -> None:
        if self.initialiser not in INITIALISERS:
            raise ValueError(f"initialiser {self.initialiser!r}: expected one of {list(INITIALISERS)}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance {self.distance!r}: expected one of {list(DISTANCES)}")
        if self.steps < 0 or self.n_init < 1 or self.lam < 0 or self.distance_scale <= 0:
            raise ValueError("expected steps >= 0, n_init >= 1, lam >= 0, distance_scale > 0")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> InferenceSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


@dataclass
class Inversion:
    """Result of Algorithm 2's inner loop for N samples x K classes.

    z, z_init: (N, K, latent_dim); offsets: (N, K, n_blocks, latent_dim) for the "+" variant, else
    None. All detached.
    """

    z: torch.Tensor
    z_init: torch.Tensor
    offsets: torch.Tensor | None


class GanAbs(Defense):
    """GAN-based ABS: logits (N, K) = -(D(x, G(z*_y, y)) + λ R) per class y (Algorithm 2)."""

    randomized = False  # fixed cached codes / encoder and deterministic Adam: same x, same logits

    def __init__(self, geometry: GanGeometry, settings: InferenceSettings) -> None:
        super().__init__()
        self.geometry = geometry
        self.settings = settings
        self.num_classes = geometry.num_classes
        self.generator = Generator(geometry)
        self.encoder = Encoder(geometry) if settings.initialiser != "direct" else None
        self.feature_net = FeatureNet(geometry) if settings.distance == "feature" else None
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        for p in self.parameters():  # inference never trains the networks
            p.requires_grad_(False)

    # -- weights -----------------------------------------------------------------------------
    def load_weight_files(self, paths: dict[str, Any]) -> None:
        """Load the prefixed state dicts this config uses from every file in ``paths`` (strict).

        Files may hold more parts (``discriminator.``, an unused ``encoder.``): those are skipped,
        since one trained GAN serves several inference configurations.
        """
        from robustgen_bench.weights import load_state_file

        state: dict[str, torch.Tensor] = {}
        for p in paths.values():
            state |= load_state_file(p)
        own = set(self.state_dict())
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        self._cache = None

    def load_state_dict(self, *args: Any, **kwargs: Any):  # noqa: D102 - invalidate the cache
        self._cache = None
        return super().load_state_dict(*args, **kwargs)

    # -- Algorithm 3 cache -------------------------------------------------------------------
    def direct_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (M, latent_dim), images (K, M, C, H, W)), built once per model from ``init_seed``."""
        if self._cache is None:
            g = torch.Generator().manual_seed(self.settings.init_seed)
            codes = torch.randn(self.settings.n_init, self.geometry.latent_dim, generator=g)
            with torch.no_grad():
                images = torch.stack([
                    self.generator(codes, torch.full((len(codes),), k, dtype=torch.long))
                    for k in range(self.num_classes)])
            self._cache = (codes, images)
        return self._cache

    def initial_codes(self, x: torch.Tensor) -> torch.Tensor:
        """z_init (N, K, latent_dim) for x (N, C, H, W), by the configured initialiser."""
        with torch.no_grad():
            if self.settings.initialiser == "direct":
                codes, images = self.direct_cache()
                return direct_init(x, codes, images)
            assert self.encoder is not None
            return self.encoder(x)[:, None].expand(-1, self.num_classes, -1).clone()

    # -- loss --------------------------------------------------------------------------------
    def _generate(self, z: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """z (N, K, d) [+ offsets (N, K, B, d)] -> images (N, K, C, H, W); class k for column k."""
        n, k, d = z.shape
        y = torch.arange(k).repeat(n)
        if offsets is None:
            img = self.generator(z.reshape(n * k, d), y)
        else:
            img = self.generator.forward_blocks((z[:, :, None] + offsets).reshape(n * k, -1, d), y)
        return img.view(n, k, *img.shape[1:])

    def distance(self, x: torch.Tensor, rec: torch.Tensor,
                 x_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """D(x, rec) / distance_scale for x (N, C, H, W), rec (N, K, C, H, W) -> (N, K).

        ``l2``: ||x - rec||²; ``feature``: eq. 3.7, ||x - rec||² + λ_p · eq. 3.6.
        """
        n, k = rec.shape[:2]
        d = (rec - x[:, None]).pow(2).flatten(2).sum(2)
        if self.settings.distance == "feature":
            assert self.feature_net is not None
            fx = x_feats if x_feats is not None else self.feature_net.features(x)
            fr = self.feature_net.features(rec.flatten(0, 1))
            fx_rep = [f.repeat_interleave(k, 0) for f in fx]
            d = d + self.settings.feature_weight * feature_distance(fx_rep, fr).view(n, k)
        return d / self.settings.distance_scale

    def regulariser(self, z: torch.Tensor, z_init: torch.Tensor,
                    offsets: torch.Tensor | None) -> torch.Tensor:
        """||z - z_init||² (+ sum_i ||z_i||² for "+") -> (N, K)."""
        r = (z - z_init).pow(2).sum(-1)
        if offsets is not None:
            r = r + offsets.pow(2).sum((-1, -2))
        return r

    def objective(self, x: torch.Tensor, z: torch.Tensor, z_init: torch.Tensor,
                  offsets: torch.Tensor | None,
                  x_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Algorithm 2's l = D(x, G(z, y)) + λ R(z, z_init) for every class -> (N, K)."""
        rec = self._generate(z, offsets)
        return self.distance(x, rec, x_feats) + self.settings.lam * self.regulariser(z, z_init, offsets)

    # -- Algorithm 2 -------------------------------------------------------------------------
    def invert(self, x: torch.Tensor, z_init: torch.Tensor | None = None,
               steps: int | None = None, start: Inversion | None = None) -> Inversion:
        """Optimise z (and the "+" offsets) for every class with Adam + cyclical LR; no graph to x.

        The regulariser is anchored at ``z_init`` (default: the initialiser's codes for x); the
        optimisation starts there, or at ``start.z`` (and ``start.offsets``) when given (the warm
        start); ``steps`` overrides the settings' (the cyclical schedule spans them).
        """
        s = self.settings
        x = x.detach()
        z_init = self.initial_codes(x) if z_init is None else z_init.detach()
        z = (z_init if start is None else start.z).detach().clone().requires_grad_(True)
        params = [z]
        offsets = None
        if s.plus_variant:
            if start is not None and start.offsets is not None:
                offsets = start.offsets.detach().clone().requires_grad_(True)
            else:
                offsets = torch.zeros(*z.shape[:2], self.generator.n_blocks, z.shape[2],
                                      requires_grad=True)
            params.append(offsets)
        total = s.steps if steps is None else steps
        if total > 0:
            opt = torch.optim.Adam(params, lr=s.max_lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: cyclical_lr_factor(t, total))
            with torch.enable_grad():
                x_feats = None
                if self.feature_net is not None:
                    with torch.no_grad():
                        x_feats = self.feature_net.features(x)
                for _ in range(total):
                    # Sum, not mean: each (sample, class) problem is independent and Adam is
                    # elementwise, so batching them changes nothing.
                    loss = self.objective(x, z, z_init, offsets, x_feats).sum()
                    grads = torch.autograd.grad(loss, params)  # no gradients for network weights
                    for p, g in zip(params, grads):
                        p.grad = g
                    opt.step()
                    sched.step()
        return Inversion(z=z.detach(), z_init=z_init,
                         offsets=None if offsets is None else offsets.detach())

    def class_losses(self, x: torch.Tensor, inv: Inversion) -> torch.Tensor:
        """l_y (N, K) at the (detached) inversion; differentiable w.r.t. x only."""
        return self.objective(x, inv.z, inv.z_init, inv.offsets)

    def _chunks(self, x: torch.Tensor):
        b = self.settings.batch_size
        return (x[i:i + b] for i in range(0, len(x), b))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Deployed inference: x (N, C, H, W) -> logits (N, K) = -l_y."""
        out = []
        for xb in self._chunks(x):
            inv = self.invert(xb)
            with torch.no_grad():
                out.append(-self.class_losses(xb, inv))
        return torch.cat(out)

    def surrogate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Detached-z* hook: invert without a graph, then -l_y at z* with gradients to x.

        z_init is detached too, so for the L2 distance d(-logit_y)/dx = 2 (x - G(z*_y, y)) / scale.
        """
        return self.logits_at_solution(x, self.inner_solution(x))

    def inner_solution(self, x: torch.Tensor) -> list[Inversion]:
        """The detached inversion of every chunk of x (N, C, H, W)."""
        return [self.invert(xb) for xb in self._chunks(x)]

    def warm_solution(self, x: torch.Tensor, previous: object | None,
                      steps: int) -> tuple[object, object]:
        """Warm-started inversion (see :meth:`Defense.warm_solution`); the state is the solution.

        Cold (``previous`` None): the full inversion. Warm: per chunk, the regulariser stays
        anchored at the initialiser's codes for the *current* x (the problem is the defense's
        own); per (sample, class) the start is whichever of the previous z* (with its offsets)
        and those codes has the lower objective on x, then ``steps`` Adam steps.
        """
        if previous is None:
            solution = self.inner_solution(x)
            return solution, solution
        prev: list[Inversion] = previous  # type: ignore[assignment]
        chunks = list(self._chunks(x))
        if len(prev) != len(chunks) or any(p.z.shape[0] != len(xb) for p, xb in zip(prev, chunks)):
            raise ValueError("warm start from a solution of another batch shape")
        out = []
        for xb, p in zip(chunks, prev):
            z_init = self.initial_codes(xb)
            with torch.no_grad():
                zero = None if p.offsets is None else torch.zeros_like(p.offsets)
                at_prev = self.objective(xb, p.z, z_init, p.offsets)
                at_init = self.objective(xb, z_init, z_init, zero)
            better = (at_prev < at_init)[..., None]  # (N, K, 1)
            offsets = None
            if p.offsets is not None:
                offsets = torch.where(better[..., None], p.offsets, torch.zeros_like(p.offsets))
            start = Inversion(z=torch.where(better, p.z, z_init), z_init=z_init, offsets=offsets)
            out.append(self.invert(xb, z_init=z_init, steps=steps, start=start))
        return out, out

    def logits_at_solution(self, x: torch.Tensor, solution: object) -> torch.Tensor:
        invs: list[Inversion] = solution  # type: ignore[assignment]
        return torch.cat([-self.class_losses(xb, inv) for xb, inv in zip(self._chunks(x), invs)])


@register_family("gan-abs")
def build(config: dict[str, Any], *, entry: Any = None) -> GanAbs:
    """GAN-ABS from an entry's ``config`` (geometry and inference keys; unknown keys rejected)."""
    known = {f.name for f in fields(GanGeometry)} | {f.name for f in fields(InferenceSettings)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown config key {unknown[0]!r}; expected some of {sorted(known)}")
    return GanAbs(GanGeometry.from_config(config), InferenceSettings.from_config(config))
