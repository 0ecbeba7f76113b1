"""Training recipes for GAN-based ABS (thesis chapter 3): conditional GAN, encoders, feature CNN.

Parts, each checkpointed once per epoch under ``<ckpt_dir>/<part>/epoch_<k>.pt`` and resumed from
the last complete epoch (every epoch reseeds from ``seed + epoch``, so a resumed run draws the
same batches as an uninterrupted one):

- ``gan``: the self-modulated conditional generator and the spectral-normalised projection
  discriminator, hinge loss (Miyato & Koyama 2018), Adam(2e-4, betas (0.5, 0.999)).
- ``enc``: encoder trained with eq. 3.3: ||x - G(E(x), y)||² + image-discriminator loss, the image
  discriminator initialised from the GAN's and trained jointly on real vs reconstructed images.
- ``enc-d``: encoder trained with eq. 3.5: ||x - G(E(x), y)||² + latent-discriminator loss, the
  latent discriminator trained from scratch to tell E(x) from z ~ N(0, I).
- ``feature``: a small CNN classifier trained on clean and Gaussian-noised images (σ ~ U(0, 0.5)),
  a stand-in for the corruption-robust model whose features define eq. 3.6/3.7.

The generator is frozen while encoders train. The written weights file holds the state dicts under
the prefixes ``generator.``, ``discriminator.``, ``encoder.``, ``feature_net.``; the family loads
what its config uses.

Zoo use: ``rgbench train mnist/gan-abs`` (recipe ``gan_abs``, parts from ``train.parts``).
Standalone use (same checkpoints when ``--ckpt-dir`` is the entry's)::

    python -m robustgen_bench.train.gan_recipes model_zoo/mnist/gan-abs --parts gan --epochs 5
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from robustgen_bench.defenses.gan_abs import (
    Encoder,
    FeatureNet,
    GanGeometry,
    Generator,
    LatentDiscriminator,
    ProjectionDiscriminator,
)
from robustgen_bench.train import TrainContext, register_recipe

PARTS = ("gan", "enc", "enc-d", "feature")
Log = Callable[[str], None]


@dataclass(frozen=True)
class PartSettings:
    """Hyper-parameters of one training part."""

    epochs: int
    seed: int = 0
    batch_size: int = 64
    lr: float = 2e-4
    adv_weight: float = 1.0  # weight of the discriminator term in eq. 3.3 / 3.5
    noise_max: float = 0.5  # feature CNN: Gaussian noise σ ~ U(0, noise_max)
    # GAN: diversity-sensitive term (Yang et al. 2019), -w · min(|G(z1,y) - G(z2,y)|₁ / |z1 - z2|₁, cap),
    # averaged over pairs that share a class; 0 = off. Counters a generator that ignores z.
    diversity_weight: float = 0.0
    diversity_cap: float = 0.1
    disc_lr: float | None = None  # GAN: discriminator learning rate (None = lr; > lr is TTUR)
    limit: int | None = None  # use only the first `limit` training images (tests, timing)


def _no_epochs(s: PartSettings) -> PartSettings:
    """``s`` without its epoch count, which may grow between resumed runs."""
    return dataclasses.replace(s, epochs=0)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=g)
    return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def _last_epoch(part_dir: Path) -> int:
    done = [int(p.stem.split("_")[1]) for p in part_dir.glob("epoch_*.pt")]
    return max(done, default=0)


def _canonical(obj: object) -> object:
    """``obj`` with every dataclass reduced to its class name and its non-default fields.

    A field added later with a default (as ``disc_lr`` was) leaves the canonical form, and so
    the fingerprint of existing checkpoints, unchanged; setting it to another value changes it.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else dataclasses.MISSING)
            if default is dataclasses.MISSING or value != default:
                changed[f.name] = _canonical(value)
        return (type(obj).__name__, sorted(changed.items()))
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, dict):
        return sorted((str(k), _canonical(v)) for k, v in obj.items())
    return obj


def fingerprint(*parts: object, module: nn.Module | None = None) -> str:
    """sha256 of the settings (and of ``module``'s weights): what a checkpoint was trained from.

    Settings enter through :func:`_canonical`, so adding a defaulted option to a settings
    dataclass does not make older checkpoints look stale.
    """
    h = hashlib.sha256(repr(_canonical(list(parts))).encode())
    if module is not None:
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _run_epochs(part_dir: Path, s: PartSettings, modules: dict[str, nn.Module],
                opts: dict[str, torch.optim.Optimizer], epoch_fn: Callable[[int], dict[str, float]],
                log: Log, origin: str) -> None:
    """Resume from the last checkpoint in ``part_dir``, run the remaining epochs, checkpoint each.

    ``origin`` fingerprints what the part is trained from (settings, and the frozen generator for
    the encoders): checkpoints with another origin are stale (e.g. the GAN got more epochs since)
    and the part starts over.
    """
    part_dir.mkdir(parents=True, exist_ok=True)
    # Never resume past the requested epochs: asking for fewer reproduces that epoch's weights.
    start = min(_last_epoch(part_dir), s.epochs)
    state = torch.load(part_dir / f"epoch_{start}.pt", weights_only=True) if start else None
    if state is not None and state.get("origin") != origin:
        log(f"{part_dir.name}: checkpoints were trained from something else; starting over")
        for f in part_dir.glob("epoch_*.pt"):
            f.unlink()
        start, state = 0, None
    if state is not None:
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in opts.items():
            o.load_state_dict(state["opts"][k])
        log(f"{part_dir.name}: resumed after epoch {start}")
    for epoch in range(start + 1, s.epochs + 1):
        torch.manual_seed(s.seed * 1000 + epoch)
        t0 = time.time()
        stats = epoch_fn(epoch)
        tmp = part_dir / f"epoch_{epoch}.pt.part"
        torch.save({"modules": {k: m.state_dict() for k, m in modules.items()},
                    "opts": {k: o.state_dict() for k, o in opts.items()}, "epoch": epoch,
                    "origin": origin}, tmp)
        tmp.replace(part_dir / f"epoch_{epoch}.pt")
        msg = " ".join(f"{k}={v:.4f}" for k, v in stats.items())
        log(f"{part_dir.name}: epoch {epoch}/{s.epochs} {time.time() - t0:.0f}s {msg}")


def diversity(xf: torch.Tensor, z: torch.Tensor, cap: float) -> torch.Tensor:
    """Mean over pairs (i, i + N/2) of min(mean|xf_i - xf_j| / mean|z_i - z_j|, cap) -> scalar.

    xf (N, C, H, W) generated from z (N, d), pairs sharing a class. Capped so that it rewards a
    generator for using z up to a realistic spread, not for producing noise.
    """
    half = len(z) // 2
    ratio = ((xf[:half] - xf[half:2 * half]).abs().flatten(1).mean(1)
             / (z[:half] - z[half:2 * half]).abs().mean(1))
    return ratio.clamp(max=cap).mean()


def train_gan(x: torch.Tensor, y: torch.Tensor, g: GanGeometry, s: PartSettings, part_dir: Path,
              log: Log = print) -> tuple[Generator, ProjectionDiscriminator]:
    """Hinge-loss conditional GAN on x (N, 1, 28, 28) in [0, 1], y (N,); returns (G, D) in eval mode."""
    torch.manual_seed(s.seed)
    dev = x.device
    G, D = Generator(g).to(dev), ProjectionDiscriminator(g).to(dev)
    oG = torch.optim.Adam(G.parameters(), s.lr, betas=(0.5, 0.999))
    oD = torch.optim.Adam(D.parameters(), s.disc_lr or s.lr, betas=(0.5, 0.999))

    def epoch_fn(epoch: int) -> dict[str, float]:
        G.train()
        D.train()
        tot_d = tot_g = 0.0
        batches = _batches(len(x), s.batch_size, s.seed, epoch)
        for idx in batches:
            idx = idx.to(dev)
            xr, yr = x[idx], y[idx]
            yf = torch.randint(0, g.num_classes, (len(idx),), device=dev)
            with torch.no_grad():
                xf = G(torch.randn(len(idx), g.latent_dim, device=dev), yf)
            loss_d = F.relu(1 - D(xr, yr)).mean() + F.relu(1 + D(xf, yf)).mean()
            oD.zero_grad()
            loss_d.backward()
            oD.step()
            if s.diversity_weight:
                half = len(idx) // 2  # pairs (i, i + half) share a class and differ in z
                yf = torch.cat([yf[:half], yf[:half]])
                z = torch.randn(len(yf), g.latent_dim, device=dev)
                xf = G(z, yf)
                loss_g = -D(xf, yf).mean() - s.diversity_weight * diversity(xf, z, s.diversity_cap)
            else:
                loss_g = -D(G(torch.randn(len(idx), g.latent_dim, device=dev), yf), yf).mean()
            oG.zero_grad()
            loss_g.backward()
            oG.step()
            tot_d += loss_d.item()
            tot_g += loss_g.item()
        return {"loss_d": tot_d / len(batches), "loss_g": tot_g / len(batches)}

    _run_epochs(part_dir, s, {"generator": G, "discriminator": D}, {"g": oG, "d": oD}, epoch_fn, log,
                fingerprint("gan", g, _no_epochs(s)))
    return G.eval(), D.eval()


def train_encoder(x: torch.Tensor, y: torch.Tensor, G: Generator, D_image: ProjectionDiscriminator,
                  g: GanGeometry, s: PartSettings, part_dir: Path, *, latent_disc: bool,
                  log: Log = print) -> Encoder:
    """Encoder for Enc (eq. 3.3, ``latent_disc=False``) or Enc-D (eq. 3.5, ``latent_disc=True``).

    The generator stays frozen (eval mode, no gradient to its weights). Returns E in eval mode.
    """
    torch.manual_seed(s.seed)
    dev = x.device
    E = Encoder(g).to(dev)
    G.eval().requires_grad_(False)
    disc: nn.Module = LatentDiscriminator(g).to(dev) if latent_disc else D_image
    oE = torch.optim.Adam(E.parameters(), s.lr * 5, betas=(0.5, 0.999))
    oD = torch.optim.Adam(disc.parameters(), s.lr, betas=(0.5, 0.999))

    def epoch_fn(epoch: int) -> dict[str, float]:
        E.train()
        disc.train()
        tot_rec = tot_adv = 0.0
        batches = _batches(len(x), s.batch_size, s.seed, epoch)
        for idx in batches:
            idx = idx.to(dev)
            xr, yr = x[idx], y[idx]
            z = E(xr)
            rec = G(z, yr)
            # Discriminator step: real images vs reconstructions (Enc), or prior codes vs E(x) (Enc-D).
            if latent_disc:
                d_real, d_fake = disc(torch.randn_like(z)), disc(z.detach())
                loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                          + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            else:
                loss_d = F.relu(1 - disc(xr, yr)).mean() + F.relu(1 + disc(rec.detach(), yr)).mean()
            oD.zero_grad()
            loss_d.backward()
            oD.step()
            # Encoder step: per-sample squared L2 reconstruction + the discriminator term.
            loss_rec = (rec - xr).pow(2).flatten(1).sum(1).mean()
            if latent_disc:
                d = disc(z)
                loss_adv = F.binary_cross_entropy_with_logits(d, torch.ones_like(d))
            else:
                loss_adv = -disc(rec, yr).mean()
            loss = loss_rec + s.adv_weight * loss_adv
            oE.zero_grad()
            loss.backward()
            oE.step()
            tot_rec += loss_rec.item()
            tot_adv += loss_adv.item()
        return {"rec": tot_rec / len(batches), "adv": tot_adv / len(batches)}

    mods: dict[str, nn.Module] = {"encoder": E, "disc": disc}
    _run_epochs(part_dir, s, mods, {"e": oE, "d": oD}, epoch_fn, log,
                fingerprint("encoder", latent_disc, g, _no_epochs(s), module=G))
    return E.eval()


def train_feature_net(x: torch.Tensor, y: torch.Tensor, g: GanGeometry, s: PartSettings,
                      part_dir: Path, log: Log = print) -> FeatureNet:
    """Noise-robust feature CNN: cross-entropy on clean and Gaussian-noised copies of each batch."""
    torch.manual_seed(s.seed)
    net = FeatureNet(g).to(x.device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def epoch_fn(epoch: int) -> dict[str, float]:
        net.train()
        tot = 0.0
        batches = _batches(len(x), s.batch_size, s.seed, epoch)
        for idx in batches:
            idx = idx.to(x.device)
            xr, yr = x[idx], y[idx]
            sigma = torch.rand(len(idx), 1, 1, 1, device=x.device) * s.noise_max
            xn = (xr + sigma * torch.randn_like(xr)).clamp(0, 1)
            loss = F.cross_entropy(net(torch.cat([xr, xn])), torch.cat([yr, yr]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item()
        return {"ce": tot / len(batches)}

    _run_epochs(part_dir, s, {"feature_net": net}, {"opt": opt}, epoch_fn, log,
                fingerprint("feature", g, _no_epochs(s)))
    return net.eval()


def prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with keys ``<prefix>.<key>``, tensors contiguous for safetensors."""
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def train_parts(parts: list[str], settings: dict[str, PartSettings], g: GanGeometry, dataset: str,
                ckpt_dir: Path, *, data_dir: str | Path | None = None,
                base_weights: dict[str, torch.Tensor] | None = None,
                log: Log = print, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Train ``parts`` in order and return the combined prefixed state dict (CPU tensors).

    ``base_weights`` (a previous entry's weights) supplies a generator/discriminator when ``gan``
    is not among ``parts``; networks and data live on ``device``.
    """
    from robustgen_bench.data import load_tensors

    torch.set_num_threads(1)  # shared CPUs: one thread per training job
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; expected some of {list(PARTS)}")
    x, y = load_tensors(dataset, "train", data_dir)
    x, y = x.to(device), y.to(device)
    out: dict[str, torch.Tensor] = {}
    G: Generator | None = None
    D: ProjectionDiscriminator | None = None
    if "gan" in parts:
        s = settings["gan"]
        G, D = train_gan(x[: s.limit], y[: s.limit], g, s, ckpt_dir / "gan", log)
    elif base_weights is not None:
        G, D = Generator(g).to(device), ProjectionDiscriminator(g).to(device)
        G.load_state_dict(_strip(base_weights, "generator."))
        D.load_state_dict(_strip(base_weights, "discriminator."))
        G.eval()
    if G is not None and D is not None:
        out |= prefixed("generator", G) | prefixed("discriminator", D)
    for enc in ("enc", "enc-d"):
        if enc in parts:
            if G is None or D is None:
                raise ValueError(f"part {enc!r} needs a generator: train 'gan' or give base weights")
            s = settings[enc]
            E = train_encoder(x[: s.limit], y[: s.limit], G, D, g, s, ckpt_dir / enc,
                              latent_disc=enc == "enc-d", log=log)
            out |= prefixed("encoder", E)
    if "feature" in parts:
        s = settings["feature"]
        out |= prefixed("feature_net", train_feature_net(x[: s.limit], y[: s.limit], g, s,
                                                         ckpt_dir / "feature", log))
    return out


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@register_recipe("gan_abs")
def gan_abs_recipe(ctx: TrainContext) -> None:
    """``rgbench train`` recipe: ``train.parts`` (default [gan]) in order, then save the weights.

    ``train.base`` names another zoo entry whose weights supply the GAN when ``gan`` is not a part
    (the encoder and feature entries reuse the shipped GAN instead of training their own).
    """
    from safetensors.torch import load_file

    from robustgen_bench.errors import ZooError
    from robustgen_bench.zoo import fetch_weights, get_entry

    parts = ctx.hparam("parts", ["gan"], list)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ZooError(f"unknown part {bad[0]!r}; expected some of {list(PARTS)}",
                       file=ctx.entry.entry_file, key="train.parts")
    s = PartSettings(epochs=ctx.epochs, seed=ctx.seed,
                     batch_size=int(ctx.hparam("batch_size", 64, int)),
                     lr=float(ctx.hparam("lr", 2e-4, (int, float))),
                     adv_weight=float(ctx.hparam("adv_weight", 1.0, (int, float))),
                     noise_max=float(ctx.hparam("noise_max", 0.5, (int, float))),
                     diversity_weight=float(ctx.hparam("diversity_weight", 0.0, (int, float))),
                     diversity_cap=float(ctx.hparam("diversity_cap", 0.1, (int, float))),
                     disc_lr=(float(ctx.hparam("disc_lr", 0.0, (int, float)))
                              if "disc_lr" in ctx.entry.train else None))
    base_weights = None
    base_id = ctx.entry.train.get("base")
    if base_id is not None:
        base = get_entry(str(base_id))
        base_weights = {}
        for path in fetch_weights(base).values():
            base_weights |= load_file(str(path))
    cfg = dict(ctx.entry.config)
    if not ctx.resume:  # start over: drop this entry's part checkpoints
        for part in parts:
            for f in (ctx.checkpoint_dir / part).glob("epoch_*.pt"):
                f.unlink()
    state = train_parts(list(parts), {p: s for p in PARTS}, GanGeometry.from_config(cfg),
                        ctx.entry.dataset, ctx.checkpoint_dir, data_dir=ctx.data_dir,
                        base_weights=base_weights, log=ctx.console.print, device=ctx.device)
    ctx.save_weights(state)


def _main() -> None:
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write weights.safetensors into")
    ap.add_argument("--parts", nargs="+", default=["gan"], choices=PARTS)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--ckpt-dir", type=Path, default=None)
    ap.add_argument("--base", type=Path, default=None, help="weights.safetensors with a trained GAN")
    a = ap.parse_args()
    from safetensors.torch import load_file

    s = PartSettings(epochs=a.epochs, seed=a.seed, limit=a.limit)
    ckpt = a.ckpt_dir or Path("checkpoints") / a.out.name
    base = load_file(str(a.base)) if a.base else None
    state = train_parts(list(a.parts), {p: s for p in PARTS}, GanGeometry(), a.dataset, ckpt,
                        base_weights=base, log=lambda m: print(m, flush=True))
    a.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(a.out / "weights.safetensors"))


if __name__ == "__main__":
    _main()
