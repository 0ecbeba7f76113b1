"""Re-deciding success with the deployed defense: predict draws and their majority vote."""

from __future__ import annotations

import torch

from robustgen_bench.defenses.base import Defense


def predict_draws(defense: Defense, x: torch.Tensor, draws: int) -> torch.Tensor:
    """Labels from ``draws`` independent ``predict`` calls: x (N, C, H, W) -> (draws, N) int64."""
    out = torch.empty((draws, x.shape[0]), dtype=torch.long)
    if x.shape[0] == 0:
        return out
    with torch.no_grad():
        for d in range(draws):
            out[d] = defense.predict(x).argmax(dim=1).cpu()
    return out


def majority_vote(draws: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Most frequent label per column of ``draws`` (D, N) -> (N,).

    Ties go to the true label ``y`` (N,): an attack must win the vote outright, so a randomized
    defense that is right half the time is not counted as broken. Other ties go to the lowest label.
    """
    if draws.shape[1] == 0:
        return torch.empty(0, dtype=torch.long)
    k = int(max(int(draws.max()), int(y.max()))) + 1
    counts = torch.nn.functional.one_hot(draws, k).sum(dim=0).to(torch.float64)  # (N, K)
    counts[torch.arange(len(y)), y] += 0.5
    return counts.argmax(dim=1)
