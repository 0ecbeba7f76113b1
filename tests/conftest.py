"""Shared fixtures: small real MNIST data and a tiny CNN trained in the test session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DATA_DIR = Path(os.environ.get("RGBENCH_DATA", SHARED / "data"))
REFERENCE_DIR = SHARED / "reference"

os.environ.setdefault("RGBENCH_DATA", str(DATA_DIR))
os.environ.setdefault("RGBENCH_WEIGHTS", str(REFERENCE_DIR))
os.environ.setdefault("RGBENCH_NO_DOWNLOAD", "1")
# Derived files (ABS candidate caches) go to a fresh folder per test session, not the user's cache.
os.environ.setdefault("RGBENCH_CACHE", tempfile.mkdtemp(prefix="rgbench-cache-"))
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# One thread: tests are small, and on a busy 2-core machine two OpenMP threads spin (a PGD test
# took 38 s with 2 threads, 1.6 s with 1). Subprocesses started by tests inherit OMP_NUM_THREADS.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist_test_small() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 MNIST test images: x (200, 1, 28, 28) in [0, 1], y (200,)."""
    from robustgen_bench.data import load_tensors

    x, y = load_tensors("mnist", "test", DATA_DIR)
    return x[:200].clone(), y[:200].clone()


class TinyCNN(nn.Module):
    """A small MNIST CNN: (N, 1, 28, 28) → logits (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 5, 2, 2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="session")
def tiny_cnn() -> TinyCNN:
    """TinyCNN trained for one pass over 6000 MNIST training images (~5 s, ~95% accuracy)."""
    from robustgen_bench.data import load_tensors

    torch.manual_seed(0)
    x, y = load_tensors("mnist", "train", DATA_DIR)
    x, y = x[:6000], y[:6000]
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for i in range(0, len(x), 100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100]).backward()
        opt.step()
    return model.eval()


@pytest.fixture()
def tiny_defense(tiny_cnn: TinyCNN):
    """``tiny_cnn`` wrapped as a deterministic, exactly differentiable :class:`Defense`."""
    from robustgen_bench.defenses.base import Defense

    class TinyDefense(Defense):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def predict(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.m(x)

        def predict_with_grad(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x)

    return TinyDefense(tiny_cnn).eval()


TINY_MODEL_PY = '''
import torch
from torch import nn
from robustgen_bench.defenses.base import Defense


class TinyDefense(Defense):
    def __init__(self, noise: float = 0.0) -> None:
        super().__init__()
        self.noise = noise
        self.randomized = noise > 0
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 32, 5, 2, 2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )

    def predict_with_grad(self, x):
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return self.net(x)

    def predict(self, x):
        with torch.no_grad():
            return self.predict_with_grad(x)


def build(config, *, entry=None):
    return TinyDefense(**config)
'''


def write_tiny_entry(root: Path, model: nn.Module, entry_id: str = "mnist/tiny-cnn",
                     noise: float = 0.0) -> Path:
    """A user-style zoo entry (entry.yaml + model.py + weights) holding ``model``'s weights."""
    import hashlib

    from safetensors.torch import save_file

    folder = root / entry_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(TINY_MODEL_PY)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "weights.safetensors"))
    sha = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    randomized = "true" if noise else "false"
    eot = 2 if noise else 1
    (folder / "entry.yaml").write_text(
        f"id: {entry_id}\nname: Tiny{'-noisy' if noise else ''}\nbuilder: model:build\n"
        f"dataset: mnist\nconfig: {{noise: {noise}}}\n"
        f"weights: {{file: weights.safetensors, sha256: {sha}}}\n"
        f"adaptive: {{gradient: exact, randomized: {randomized}, eot: {eot}}}\n")
    return folder


@pytest.fixture()
def tmp_zoo(tmp_path: Path, tiny_cnn: TinyCNN, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary zoo root (``RGBENCH_ZOO``) with ``mnist/tiny-cnn`` and ``mnist/tiny-noisy``."""
    root = tmp_path / "zoo"
    write_tiny_entry(root, tiny_cnn)
    write_tiny_entry(root, tiny_cnn, "mnist/tiny-noisy", noise=0.05)
    monkeypatch.setenv("RGBENCH_ZOO", str(root))
    return root


RGBENCH = Path(sys.executable).with_name("rgbench")  # the installed console script of this venv


def run_cli(*args: str | Path, columns: str | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``rgbench ARGS`` as CI and job schedulers run it: the installed console script in a
    subprocess, no terminal (stdin closed, stdout/stderr pipes), ``COLUMNS`` unset or ``columns``."""
    full = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    full.update(env or {})
    if columns is not None:
        full["COLUMNS"] = columns
    return subprocess.run([str(RGBENCH), *map(str, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full)
