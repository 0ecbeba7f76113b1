"""Recipes for the CNN baselines (family ``cnn``): noise-augmented and PGD adversarial training.

Both hold out ``val_fraction`` of the training set (fixed by the seed) and report validation
accuracy every epoch; Adam and batch size follow the thesis (lr 1e-3, batch 512), epochs are
whatever the entry records (far fewer than the thesis's 500 on a GPU). ``lr_halve_every: E``
halves the learning rate every E epochs (the thesis halves it every 200); the rate is a function
of the epoch, so a resumed run follows the same schedule. ``adv_pgd`` also reports the accuracy
of ``val_robust_n`` validation images under its own training attack, the number to choose its
settings on (never the test split). ``bn_recalibrate: true`` (``cnn_noise``) re-estimates the
BatchNorm statistics on the clean training images after the last epoch (see
:func:`recalibrate_batchnorm`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from robustgen_bench.errors import UserInputError, ZooError
from robustgen_bench.train import TrainContext, register_recipe
from robustgen_bench.train.loop import accuracy, batch_indices, epoch_lr, run_epochs, train_val_split
from robustgen_bench.zoo import build_defense, get_entry


def _setup(ctx: TrainContext):
    """Seeded model (from the entry's family), Adam and the train/val split."""
    torch.manual_seed(ctx.seed)
    model = build_defense(ctx.entry, load_weights=False).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=float(ctx.hparam("lr", 1e-3, (int, float))))
    x, y = ctx.load_data("train")
    (xtr, ytr), (xval, yval) = train_val_split(
        x, y, float(ctx.hparam("val_fraction", 0.1, (int, float))), ctx.seed)
    return model, opt, (xtr, ytr), (xval, yval)


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> int:
    """Re-estimate every BatchNorm's running mean and variance on the images x (N, C, H, W),
    the weights fixed: a cumulative average over x in a fixed order (momentum None), dropout
    off, no gradients. Returns the number of BatchNorm layers re-estimated.

    Why: a model trained on noisy inputs keeps the statistics of noisy inputs, and in eval mode
    normalises clean images with them; re-estimating them on clean images removes that mismatch
    (the weights, and what the network learned, are unchanged).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = {m: m.momentum for m in bns}
    model.eval()  # dropout (and everything else) as deployed ...
    for m in bns:  # ... except the BatchNorms, which now accumulate batch statistics
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model.predict_with_grad(x[i:i + batch_size]) if hasattr(model, "predict_with_grad") \
                    else model(x[i:i + batch_size])
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        model.eval()
    return len(bns)


def _train_loop(ctx: TrainContext, model: nn.Module, opt: torch.optim.Optimizer,
                train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                make_inputs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], label: str,
                extra_metrics: Callable[[], dict[str, float]] | None = None,
                bn_recalibrate: bool = False) -> None:
    """Cross-entropy epochs on ``make_inputs(xb, yb)`` (xb (B, C, H, W) -> (B, C, H, W));
    with ``bn_recalibrate``, BatchNorm statistics re-estimated on the clean training images at
    the end (:func:`recalibrate_batchnorm`)."""
    xtr, ytr = train
    bs = int(ctx.hparam("batch_size", 512, int))
    n_batches = (len(ytr) + bs - 1) // bs
    ctx.hparam("lr", 1e-3, (int, float))  # type checks; lr_at reads the values
    halve_every = (ctx.hparam("lr_halve_every", None, int)
                   if ctx.entry.train.get("lr_halve_every") is not None else None)
    if halve_every is not None and halve_every < 1:
        raise ZooError(f"expected a positive number of epochs, got {halve_every}",
                       file=ctx.entry.entry_file, key="train.lr_halve_every")

    def lr_at(train: Mapping[str, Any], epoch: int) -> float:
        # one reading of the schedule, for this entry's ``train`` and a checkpoint's (run_epochs)
        return epoch_lr(float(train.get("lr", 1e-3)), epoch, train.get("lr_halve_every"))

    def epoch_fn(epoch: int) -> dict[str, float]:
        for group in opt.param_groups:
            group["lr"] = lr_at(ctx.entry.train, epoch)
        total, seen = 0.0, 0
        with ctx.progress() as prog:
            task = prog.add_task(f"{ctx.entry.id} {label} epoch {epoch + 1}/{ctx.epochs}",
                                 total=n_batches, status="")
            for idx in batch_indices(len(ytr), bs, ctx.seed, epoch):
                idx = idx.to(ytr.device)
                xb, yb = xtr[idx], ytr[idx]
                inputs = make_inputs(xb, yb)
                model.train()
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model.predict_with_grad(inputs), yb)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(yb)
                seen += len(yb)
                prog.update(task, advance=1, status=f"loss {total / seen:.4f}")
        model.eval()
        metrics = {"train_loss": total / seen, "val_acc": accuracy(model.predict, *val)}
        if extra_metrics is not None:
            metrics.update(extra_metrics())
        return metrics

    run_epochs(ctx, {"model": model}, {"opt": opt}, epoch_fn, lr_at=lr_at)
    model.eval()
    if bn_recalibrate:
        before = accuracy(model.predict, *val)
        n = recalibrate_batchnorm(model, xtr, bs)
        ctx.console.print(f"{ctx.entry.id}: BatchNorm statistics of {n} layers re-estimated on "
                          f"{len(ytr)} clean training images (val accuracy {before:.4f} before)")
    ctx.console.print(f"{ctx.entry.id}: final val accuracy {accuracy(model.predict, *val):.4f} "
                      f"on {len(val[1])} held-out training images")
    ctx.save_weights(model.state_dict())


def random_shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Each image of x (B, C, H, W) translated by its own random offset in [-pixels, pixels]²
    (zero fill), drawn from the global RNG."""
    if pixels <= 0:
        return x
    b, c, h, w = x.shape
    xp = nn.functional.pad(x, (pixels, pixels, pixels, pixels))
    dev = x.device
    oy = torch.randint(0, 2 * pixels + 1, (b,)).to(dev)  # CPU generator: same shifts on any device
    ox = torch.randint(0, 2 * pixels + 1, (b,)).to(dev)
    rows = (oy[:, None] + torch.arange(h, device=dev)[None])[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=dev)[None])[:, None, None, :]  # (B, 1, 1, W)
    return xp[torch.arange(b, device=dev)[:, None, None, None],
              torch.arange(c, device=dev)[None, :, None, None], rows, cols]


@register_recipe("cnn_noise")
def cnn_noise(ctx: TrainContext) -> None:
    """Cross-entropy on x + N(0, noise_sigma²) clipped to [0, 1] (train.noise_sigma), after an
    optional random translation of up to ``shift`` pixels (train.shift, default 0); with
    ``bn_recalibrate: true``, BatchNorm statistics re-estimated on clean images at the end."""
    sigma = float(ctx.hparam("noise_sigma", 0.0, (int, float)))
    shift = int(ctx.hparam("shift", 0, int))
    recal = bool(ctx.hparam("bn_recalibrate", False, bool))
    model, opt, train, val = _setup(ctx)

    def noisy(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        # shifts and noise from the global RNG, seeded by run_epochs and restored on resume
        xb = random_shift(xb, shift)
        return (xb + sigma * torch.randn_like(xb)).clamp(0, 1) if sigma > 0 else xb

    _train_loop(ctx, model, opt, train, val, noisy, f"noise σ={sigma}", bn_recalibrate=recal)


@register_recipe("adv_pgd")
def adv_pgd(ctx: TrainContext) -> None:
    """PGD adversarial training (Madry et al.) from the weights of ``train.init_from``.

    Reads ``threat`` (linf|l2), ``epsilon``, ``pgd_steps``, ``pgd_alpha``; the inner attack is
    torchattacks ``PGD``/``PGDL2`` with a random start, run with the model in eval mode.
    """
    from robustgen_bench.attacks.backends import missing_library

    missing = missing_library("torchattacks")
    if missing:  # bad input (exit 2) before any work, with the install command
        raise UserInputError(f"{missing} (recipe adv_pgd uses it)", file=ctx.entry.entry_file,
                             key="train.recipe")
    import torchattacks

    init_from = ctx.hparam("init_from", None, str)
    threat = ctx.hparam("threat", None, str)
    eps = float(ctx.hparam("epsilon", None, (int, float)))
    steps = int(ctx.hparam("pgd_steps", None, int))
    alpha = float(ctx.hparam("pgd_alpha", None, (int, float)))
    model, opt, train, val = _setup(ctx)
    root = ctx.entry.path
    for _ in ctx.entry.id.split("/"):  # the zoo root this entry was found under
        root = root.parent
    init = build_defense(get_entry(init_from, root))
    model.load_state_dict(init.state_dict(), strict=True)
    if threat == "linf":
        attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    elif threat == "l2":
        attack = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    else:
        raise ZooError(f"expected linf or l2, got {threat!r}", file=ctx.entry.entry_file, key="train.threat")

    def adversarial(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        model.eval()
        return attack(xb, yb).detach()

    n_rob = int(ctx.hparam("val_robust_n", 500, int))
    xv, yv = val[0][:n_rob], val[1][:n_rob]

    def robust_val() -> dict[str, float]:
        # the training attack on held-out images: a selection signal, not the reported robustness
        return {"val_robust_acc": accuracy(model.predict, adversarial(xv, yv), yv)} if n_rob else {}

    _train_loop(ctx, model, opt, train, val, adversarial, f"PGD-{threat} ε={eps}", robust_val)
