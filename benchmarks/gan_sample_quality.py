"""How well a GAN-ABS generator covers each class: sample spread and class fidelity.

GAN-ABS can only reconstruct an input of class y if G(·, y) varies with z the way class y's
images vary, so a generator that ignores z (intra-class mode collapse) makes a poor classifier.
For every class this prints

- the per-pixel standard deviation across 100 samples G(z, y), averaged over pixels, next to the
  same figure for the real training images of that class;
- the fraction of samples G(z, y) that the dataset's plain CNN (``<dataset>/cnn``) labels y.

It can read a zoo entry's generator or a training checkpoint, and writes a sample grid PNG
(rows: z, columns: classes)::

    python benchmarks/gan_sample_quality.py mnist/gan-abs --grid leaderboards/gan_samples_mnist.png
    python benchmarks/gan_sample_quality.py mnist/gan-abs --checkpoint checkpoints/mnist/gan-abs/gan/epoch_2.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from robustgen_bench.data import load_tensors
from robustgen_bench.defenses.gan_abs import Generator
from robustgen_bench.zoo import build_defense, get_entry


def load_generator(entry_id: str, checkpoint: Path | None) -> Generator:
    """The entry's generator (loaded and sha256-verified by the zoo), or a ``train`` checkpoint's."""
    G = build_defense(get_entry(entry_id)).generator
    if checkpoint is not None:
        G.load_state_dict(torch.load(checkpoint, weights_only=True)["modules"]["generator"])
    return G.eval()


def per_class_spread(x: torch.Tensor, y: torch.Tensor, k: int) -> list[float]:
    """Mean over pixels of the per-pixel std within each class: x (N, C, H, W), y (N,) -> K floats."""
    return [float(x[y == c].std(0).mean()) for c in range(k)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("entry", help="a gan-abs zoo entry, e.g. mnist/gan-abs")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a gan/epoch_<k>.pt instead")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=Path, default=None, help="write an 8 x K sample grid PNG here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    entry = get_entry(a.entry)
    G = load_generator(a.entry, a.checkpoint)
    k, d = G.geometry.num_classes, G.geometry.latent_dim
    cnn = build_defense(get_entry(f"{entry.dataset}/cnn"))
    x, y = load_tensors(entry.dataset, "train")
    gen = torch.Generator().manual_seed(a.seed)
    labels = torch.arange(k).repeat(a.per_class)
    with torch.no_grad():
        samples = G(torch.randn(len(labels), d, generator=gen), labels)
        hit = cnn.predict(samples).argmax(1) == labels
    real, fake = per_class_spread(x, y, k), per_class_spread(samples, labels, k)
    print(f"{a.entry}" + (f" @ {a.checkpoint}" if a.checkpoint else "") + f", {a.per_class} samples per class")
    print("class | real spread | sample spread | CNN agrees")
    for c in range(k):
        print(f"{c:5d} | {real[c]:11.3f} | {fake[c]:13.3f} | {float(hit[labels == c].float().mean()):10.2f}")
    print(f"  all | {sum(real) / k:11.3f} | {sum(fake) / k:13.3f} | {float(hit.float().mean()):10.2f}")
    if a.grid is not None:
        from torchvision.utils import save_image

        with torch.no_grad():
            rows = G(torch.randn(8 * k, d, generator=gen), torch.arange(k).repeat(8))
        a.grid.parent.mkdir(parents=True, exist_ok=True)
        save_image(rows, a.grid, nrow=k, padding=1)
        print(f"wrote {a.grid}")


if __name__ == "__main__":
    main()
