"""Training recipes for ABS (one VAE per class) and E-ABS (thesis Algorithm 1), with the ablations.

The two recipes share one training step; which losses and networks it uses is configuration,
read from the entry's ``config`` (the same keys the ``abs``/``eabs`` defense family reads):

- ``shared_encoder`` (ablation D): one encoder for all classes plus the discriminative loss of
  eq. 2.4 weighted by ``train.gamma``; false means one encoder per class, each trained only on its
  own class (Schott et al.'s ABS).
- ``aae`` (ablation A): the latent regulariser is an adversarial discriminator (``-β log D(z)``,
  eq. 2.3) instead of the VAE's ``β KL(q(z|x) || N(0, I))``. With a shared encoder there is one
  discriminator; with class encoders there is one per class, and each also sees latents of other
  classes' images (thesis, "Ablation Study": they see in- and out-of-distribution latents).
- ``variational`` (ablation V) only changes inference, so training ignores it.

Every example is augmented with additive Gaussian noise (``train.noise_sigma``, 0.2 for MNIST and
Fashion-MNIST in the thesis) on the encoder input; the reconstruction target is the clean image
(its expected squared error differs from a noisy target only by a constant, with less variance).
The cost is ``c(x, x̂) = ||x - x̂||²`` summed over pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustgen_bench.defenses.modules import Geometry, GenerativeNets
from robustgen_bench.errors import ZooError
from robustgen_bench.train import TrainContext, register_recipe
from robustgen_bench.train.loop import batch_indices, epoch_lr, run_epochs, train_val_split


@dataclass(frozen=True)
class GenerativeTrainSpec:
    """Hyper-parameters of one ABS-family training run (entry ``config`` + ``train``)."""

    shared_encoder: bool
    aae: bool
    num_classes: int = 10
    beta: float = 1.0
    gamma: float = 10.0
    noise_sigma: float = 0.2
    lr: float = 1e-3
    lr_halve_every: int = 200
    batch_size: int = 512
    val_fraction: float = 0.1
    val_max: int = 2000
    # CPU budget: an "epoch" may be a seeded random subset of this many training examples
    # (a fresh subset every epoch); None means the whole training split
    examples_per_epoch: int | None = None

    @property
    def n_discriminators(self) -> int:
        if not self.aae:
            return 0
        return 1 if self.shared_encoder else self.num_classes

    @classmethod
    def from_entry(cls, config: Mapping[str, Any], train: Mapping[str, Any],
                   where: Path | None = None) -> GenerativeTrainSpec:
        """Read the switches from ``config`` and the optimisation settings from ``train``."""
        def flag(key: str) -> bool:
            v = config.get(key, False)
            if not isinstance(v, bool):
                raise ZooError(f"expected true or false, got {v!r}", file=where, key=f"config.{key}")
            return v

        def num(key: str, default: float, kind: type = float) -> Any:
            v = train.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
                raise ZooError(f"expected a number, got {v!r}", file=where, key=f"train.{key}")
            return kind(v)

        return cls(
            shared_encoder=flag("shared_encoder"), aae=flag("aae"),
            num_classes=int(config.get("num_classes", 10)),
            beta=num("beta", 1.0), gamma=num("gamma", 10.0), noise_sigma=num("noise_sigma", 0.2),
            lr=num("lr", 1e-3), lr_halve_every=num("lr_halve_every", 200, int),
            batch_size=num("batch_size", 512, int), val_fraction=num("val_fraction", 0.1),
            val_max=num("val_max", 2000, int),
            examples_per_epoch=(None if train.get("examples_per_epoch") is None
                                else num("examples_per_epoch", 0, int)),
        )


def build_nets(config: Mapping[str, Any], num_classes: int = 10) -> GenerativeNets:
    """The networks an ABS-family entry's weights hold (exactly ``GenerativeNets.state_dict()``)."""
    shared = bool(config.get("shared_encoder", False))
    aae = bool(config.get("aae", False))
    n_disc = 0 if not aae else (1 if shared else num_classes)
    return GenerativeNets(Geometry.from_config(dict(config)), num_classes=num_classes,
                          shared_encoder=shared, n_discriminators=n_disc)


def sq_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """c(x, x̂): x, x̂ (..., C, H, W) → squared error summed over pixels (...)."""
    return (x - x_hat).pow(2).flatten(-3).sum(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) || N(0, I)): μ, log σ² (N, d) → (N,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """One draw z ~ N(μ, σ²): (N, d) → (N, d), from the global torch RNG."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Batch-norm uses batch statistics but does not update its running statistics (momentum 0)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def generator_loss(nets: GenerativeNets, spec: GenerativeTrainSpec, x_in: torch.Tensor,
                   x: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor | None]]:
    """Encoder/decoder objective (eq. 2.5 and its ablations) on a batch.

    x_in (N, C, H, W) is the noisy encoder input, x the clean target, y (N,) the labels.
    Returns the scalar loss, detached logging terms and, per encoder, the latents it produced
    (shared: one (N, d) tensor; per class: (n_k, d) for class k's rows, None if absent).
    """
    n = len(y)
    if spec.shared_encoder:
        mu, logvar = nets.encoders[0].latent(x_in)
        z = reparameterize(mu, logvar)
        # every decoder reconstructs every example: the discriminative loss needs all K costs
        costs = torch.stack([sq_error(x, dec(z)) for dec in nets.decoders], dim=1)  # (N, K)
        recon = costs.gather(1, y[:, None]).squeeze(1)
        if spec.aae:
            reg = spec.beta * F.softplus(-nets.discriminators[0](z))  # -β log D(z)
        else:
            reg = spec.beta * kl_standard_normal(mu, logvar)
        ce = F.cross_entropy(-costs, y, reduction="none")  # -log softmax_y(-c_k)
        total = (recon + reg + spec.gamma * ce).mean()
        terms = {"recon": recon.mean(), "reg": reg.mean(), "ce": ce.mean(),
                 "acc": (costs.argmin(1) == y).float().mean()}
        return total, {k: v.detach() for k, v in terms.items()}, [z.detach()]
    # one VAE/AAE per class, each trained only on its own class's examples
    recon_sum = x.new_zeros(())
    reg_sum = x.new_zeros(())
    latents: list[torch.Tensor | None] = []
    for k in range(spec.num_classes):
        rows = (y == k).nonzero().squeeze(1)
        if len(rows) == 0:
            latents.append(None)
            continue
        mu, logvar = nets.encoders[k].latent(x_in[rows])
        z = reparameterize(mu, logvar)
        recon_sum = recon_sum + sq_error(x[rows], nets.decoders[k](z)).sum()
        if spec.aae:
            reg_sum = reg_sum + spec.beta * F.softplus(-nets.discriminators[k](z)).sum()
        else:
            reg_sum = reg_sum + spec.beta * kl_standard_normal(mu, logvar).sum()
        latents.append(z.detach())
    total = (recon_sum + reg_sum) / n
    terms = {"recon": recon_sum / n, "reg": reg_sum / n}
    return total, {k: v.detach() for k, v in terms.items()}, latents


def discriminator_loss(nets: GenerativeNets, spec: GenerativeTrainSpec, x_in: torch.Tensor,
                       latents: list[torch.Tensor | None]) -> torch.Tensor:
    """β·[-log D(z̃ ~ N(0, I)) - log(1 - D(z_enc))], averaged; x_in (N, C, H, W) noisy inputs."""
    d = nets.geometry.latent_dim
    if spec.shared_encoder:
        z_enc = latents[0]
        assert z_enc is not None
        z_prior = torch.randn(len(z_enc), d, device=z_enc.device)
        disc = nets.discriminators[0]
        return spec.beta * (F.softplus(-disc(z_prior)) + F.softplus(disc(z_enc))).mean()
    # class-specific discriminators see latents of all images through their class's encoder
    # (thesis: in- and out-of-distribution); the extra encoder pass neither trains the encoder
    # nor moves its batch-norm running statistics
    loss = x_in.new_zeros(())
    for k in range(spec.num_classes):
        with torch.no_grad(), frozen_bn_stats(nets.encoders[k]):
            z_enc = reparameterize(*nets.encoders[k].latent(x_in))
        z_prior = torch.randn(len(z_enc), d, device=z_enc.device)
        disc = nets.discriminators[k]
        loss = loss + (F.softplus(-disc(z_prior)) + F.softplus(disc(z_enc))).mean()
    return spec.beta * loss / spec.num_classes


def generator_parameters(nets: GenerativeNets) -> list[nn.Parameter]:
    return [*nets.encoders.parameters(), *nets.decoders.parameters()]


def make_optimizers(nets: GenerativeNets, spec: GenerativeTrainSpec) -> dict[str, torch.optim.Optimizer]:
    """Adam for encoders+decoders (``gen``) and, with ``aae``, for the discriminators (``disc``)."""
    opts: dict[str, torch.optim.Optimizer] = {
        "gen": torch.optim.Adam(generator_parameters(nets), lr=spec.lr)}
    if spec.aae:
        opts["disc"] = torch.optim.Adam(nets.discriminators.parameters(), lr=spec.lr)
    return opts


def train_step(nets: GenerativeNets, spec: GenerativeTrainSpec,
               optimizers: Mapping[str, torch.optim.Optimizer], x: torch.Tensor, y: torch.Tensor
               ) -> dict[str, float]:
    """One interleaved update (Algorithm 1): encoders/decoders, then discriminators.

    x (N, C, H, W) clean images in [0, 1], y (N,) labels. Returns batch-mean loss terms.
    """
    nets.train()
    x_in = (x + spec.noise_sigma * torch.randn_like(x)).clamp(0.0, 1.0)
    loss, terms, latents = generator_loss(nets, spec, x_in, x, y)
    optimizers["gen"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["gen"].step()
    out = {"loss": float(loss.detach()), **{k: float(v) for k, v in terms.items()}}
    if spec.aae:
        d_loss = discriminator_loss(nets, spec, x_in, latents)
        optimizers["disc"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["disc"].step()
        out["d_loss"] = float(d_loss.detach())
    return out


@torch.no_grad()
def encoder_scores(nets: GenerativeNets, spec: GenerativeTrainSpec, x: torch.Tensor) -> torch.Tensor:
    """Cheap validation proxy (not the deployed ABS inference): per-class loss at the encoder's mean.

    x (N, C, H, W) → (N, K) scores, lower is better: c(x, G_k(μ_k(x))) + regulariser at μ_k.
    """
    nets.eval()
    cols = []
    for k in range(spec.num_classes):
        enc = nets.encoders[0 if spec.shared_encoder else k]
        mu, logvar = enc.latent(x)
        c = sq_error(x, nets.decoders[k](mu))
        if spec.aae:
            disc = nets.discriminators[0 if spec.shared_encoder else k]
            c = c + spec.beta * F.softplus(-disc(mu))
        else:
            c = c + spec.beta * kl_standard_normal(mu, logvar)
        cols.append(c)
    return torch.stack(cols, dim=1)


def validate(nets: GenerativeNets, spec: GenerativeTrainSpec, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 500) -> dict[str, float]:
    """Validation reconstruction error (own class) and encoder-proxy accuracy on x (N, ...), y (N,)."""
    correct, recon = 0, 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        s = encoder_scores(nets, spec, xb)
        correct += int((s.argmin(1) == yb).sum())
        with torch.no_grad():
            for k in yb.unique().tolist():
                rows = yb == k
                enc = nets.encoders[0 if spec.shared_encoder else k]
                recon += float(sq_error(xb[rows], nets.decoders[k](enc.latent(xb[rows])[0])).sum())
    return {"val_recon": recon / max(1, len(y)), "val_proxy_acc": correct / max(1, len(y))}


def train_generative(ctx: TrainContext) -> None:
    """Shared body of the ``abs_vae`` and ``eabs`` recipes (they differ only in entry config)."""
    torch.set_num_threads(1)  # two cores shared by many jobs
    entry = ctx.entry
    spec = GenerativeTrainSpec.from_entry(entry.config, entry.train, where=entry.entry_file)
    x, y = ctx.load_data("train")
    (x_tr, y_tr), (x_val, y_val) = train_val_split(x, y, spec.val_fraction, ctx.seed)
    x_val, y_val = x_val[:spec.val_max], y_val[:spec.val_max]
    torch.manual_seed(ctx.seed)  # initial weights fixed by the seed
    nets = build_nets(entry.config, spec.num_classes).to(ctx.device)
    optimizers = make_optimizers(nets, spec)
    per_epoch = min(len(y_tr), spec.examples_per_epoch or len(y_tr))
    n_batches = (per_epoch + spec.batch_size - 1) // spec.batch_size

    def epoch_fn(epoch: int) -> dict[str, float]:
        for opt in optimizers.values():  # thesis: halve the learning rate every 200 epochs
            for group in opt.param_groups:
                group["lr"] = epoch_lr(spec.lr, epoch, spec.lr_halve_every)
        sums: dict[str, float] = {}
        with ctx.progress() as progress:
            task = progress.add_task(f"{entry.id} epoch {epoch + 1}/{ctx.epochs}", total=n_batches,
                                     status="")
            batches = batch_indices(len(y_tr), spec.batch_size, ctx.seed, epoch)
            # the first n_batches of this epoch's permutation: a fresh random subset per epoch
            for i, idx in zip(range(n_batches), batches):
                idx = idx.to(y_tr.device)
                out = train_step(nets, spec, optimizers, x_tr[idx], y_tr[idx])
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                progress.update(task, advance=1, status=f"loss {out['loss']:.2f}")
                if (i + 1) % 20 == 0:  # a readable trace in non-interactive logs too
                    ctx.console.log(f"{entry.id} epoch {epoch + 1} step {i + 1}/{n_batches} "
                                    + " ".join(f"{k}={v:.3f}" for k, v in out.items()))
        metrics = {f"train_{k}": v / n_batches for k, v in sums.items()}
        metrics.update(validate(nets, spec, x_val, y_val))
        return metrics

    def lr_at(train: Mapping[str, Any], epoch: int) -> float:
        s = GenerativeTrainSpec.from_entry(entry.config, train)
        return epoch_lr(s.lr, epoch, s.lr_halve_every)

    modules = {"nets": nets}
    run_epochs(ctx, modules, optimizers, epoch_fn, lr_at=lr_at)
    ctx.save_weights(nets.state_dict())


@register_recipe("abs_vae")
def abs_vae(ctx: TrainContext) -> None:
    """Schott et al.'s ABS with Table 2.1 modules: one VAE per class (``shared_encoder: false``)."""
    train_generative(ctx)


@register_recipe("eabs")
def eabs(ctx: TrainContext) -> None:
    """E-ABS (Algorithm 1) and every Table 2.6 ablation, selected by ``config.aae``/``shared_encoder``."""
    train_generative(ctx)
