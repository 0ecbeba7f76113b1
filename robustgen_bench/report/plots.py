"""PNG figures (matplotlib, Agg backend): robust accuracy vs ε, clean/adversarial example grids."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from robustgen_bench.stats import threat_label  # noqa: E402

EXAMPLES_FILE = "examples.safetensors"


def plot_robust_accuracy(curve: pd.DataFrame, threat: str, path: Path,
                         marks: Mapping[float, str] | None = None) -> Path:
    """Robust accuracy vs ε, one line per model (``curve``: index ε, columns display names).

    ``marks`` draws vertical lines at the suite's budgets (ε -> label).
    """
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for model in curve.columns:
        ax.plot(curve.index.to_numpy(), 100 * curve[model].to_numpy(), label=str(model))
    for eps, label in (marks or {}).items():
        ax.axvline(eps, color="grey", linestyle=":", linewidth=1)
        ax.annotate(label, (eps, 100), fontsize=7, color="grey", ha="left", va="top")
    ax.set_xlabel(f"{threat_label(threat)} budget ε")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 101)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Robust accuracy from closest {threat_label(threat)} adversarials", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(points: pd.DataFrame, path: Path, title: str) -> Path:
    """Robust accuracy (Wilson intervals as error bars) against one swept parameter.

    ``points``: rows of :func:`~robustgen_bench.report.tables.sweep_table` for one sweep and
    budget; one line per (model, ``line``). A numeric parameter gets a numeric axis (log scale
    when its values span more than a factor 20), any other one a categorical axis.
    """
    param = str(points.param.iloc[0])
    values = list(dict.fromkeys(points.value))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for (model, line), g in points.groupby(["model", "line"], sort=False):
        xs = g.value.to_numpy(dtype=float) if numeric else [values.index(v) for v in g.value]
        acc = 100 * g.accuracy.to_numpy(dtype=float)
        err = np.clip(np.vstack([acc - 100 * g.ci_low.to_numpy(dtype=float),
                                 100 * g.ci_high.to_numpy(dtype=float) - acc]), 0, None)
        ax.errorbar(xs, acc, yerr=err, marker="o", markersize=3, capsize=3,
                    label=f"{model}, {line}" if line else str(model))
    if numeric and all(isinstance(v, int) for v in values) and len(values) <= 12:
        ax.set_xticks([float(v) for v in values])
    if numeric:
        positive = [float(v) for v in values if float(v) > 0]
        if positive and max(positive) / min(positive) > 20 and min(float(v) for v in values) > 0:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(param)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, C) for imshow."""
    a = x.detach().float().clamp(0, 1).cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _over_budget(x: torch.Tensor, x_adv: torch.Tensor, budget: tuple[str, float] | None) -> list[bool]:
    """Per example: is ``x_adv`` outside the (threat, ε) budget (the attack invariant's rule)?"""
    if budget is None:
        return [False] * x.shape[0]
    threat, eps = budget
    d = (x_adv.float() - x.float()).flatten(1)
    norms = d.abs().amax(dim=1) if threat == "linf" else d.norm(dim=1)
    return [bool(n > eps + 1e-6) for n in norms]


def example_grid(tensors: Mapping[str, torch.Tensor], model: str, path: Path,
                 title: str | None = None, max_examples: int = 8,
                 budgets: Mapping[str, tuple[str, float]] | None = None) -> Path | None:
    """One PNG per model: for each attack a row of clean inputs above a row of adversarials.

    ``tensors`` uses the runner's names ``<model>|<attack>|x`` (N, C, H, W), ``...|x_adv``
    (N, C, H, W), ``...|y`` (N,) and ``...|adv_pred`` (N,). Titles are labels (clean rows) and
    the defense's verified predictions (adversarial rows, red when wrong). Returns ``None`` if
    ``model`` has none. With ``budgets`` (attack id -> (threat, ε)), an adversarial input outside
    its budget (a candidate the attack invariant rejected, counted robust) is drawn faded and
    titled "rejected", so the grid never shows an over-budget image as an adversarial example.
    """
    attacks = sorted({k.rsplit("|", 2)[1] for k in tensors
                      if k.rsplit("|", 2)[0] == model and k.endswith("|x_adv")})
    attacks = [a for a in attacks if f"{model}|{a}|x" in tensors]
    if not attacks:
        return None
    n = min(max_examples, max(int(tensors[f"{model}|{a}|x"].shape[0]) for a in attacks))
    fig, axes = plt.subplots(2 * len(attacks), n, figsize=(1.1 * n, 2.4 * len(attacks)),
                             squeeze=False, dpi=100)
    for r, attack in enumerate(attacks):
        pre = f"{model}|{attack}|"
        x, x_adv = tensors[pre + "x"], tensors[pre + "x_adv"]
        y, adv = tensors.get(pre + "y"), tensors.get(pre + "adv_pred")
        over = _over_budget(x, x_adv, (budgets or {}).get(attack))
        for c in range(n):
            for row, img, lab in ((2 * r, x, y), (2 * r + 1, x_adv, adv)):
                ax = axes[row, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= img.shape[0]:
                    ax.axis("off")
                    continue
                gray = img.shape[1] == 1
                rejected = row == 2 * r + 1 and over[c]
                ax.imshow(_image(img[c]), cmap="gray" if gray else None, vmin=0, vmax=1,
                          alpha=0.3 if rejected else 1.0)
                if rejected:
                    ax.set_title("rejected", fontsize=7, color="grey")
                elif lab is not None:
                    # red: the defense's verified prediction differs from the label
                    wrong = y is not None and int(lab[c]) != int(y[c])
                    ax.set_title(str(int(lab[c])), fontsize=8, color="red" if wrong else "black")
        axes[2 * r, 0].set_ylabel("clean", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel(attack, fontsize=8)
    fig.suptitle(title or model, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def load_examples(run_dir: Path) -> dict[str, torch.Tensor] | None:
    """The run's saved examples, or ``None`` when the runner saved none."""
    p = Path(run_dir) / EXAMPLES_FILE
    if not p.is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(p))


def plot_pvalues(matrix: pd.DataFrame, path: Path, title: str, alpha: float = 0.01) -> Path:
    """Heat map of a McNemar p-value matrix (models x models), as under the thesis's Tables 2.2-2.5.

    Cells are annotated with the p-value; those not significant at ``alpha`` are outlined.
    """
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * k, 1.2 + 0.8 * k), dpi=120)
    values = matrix.to_numpy(dtype=float)
    shown = np.where(np.isnan(values), np.nan, np.log10(np.clip(values, 1e-300, 1.0)))
    vmin = min(-10.0, float(np.nanmin(shown, initial=0.0)))
    im = ax.imshow(shown, cmap="viridis", vmin=vmin, vmax=0)  # dark = small p
    for i in range(k):
        for j in range(k):
            p = values[i, j]
            if np.isnan(p):
                continue
            ax.text(j, i, f"{p:.2g}", ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] < vmin / 2 else "black")
            if not p < alpha:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red",
                                           linewidth=1.5))
    names = [str(m) for m in matrix.index]
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    fig.colorbar(im, ax=ax, label="log10 p")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
